"""How many messages wait in each work and dead-letter queue, read from the broker itself."""

from __future__ import annotations

import contextlib

from celery import Celery
from kombu.exceptions import ChannelError, OperationalError

from integrations.celery_app import WORK_QUEUES, dead_letter_queue_name, is_amqp_broker


class BrokerUnavailable(RuntimeError):
    """The broker could not be reached to count messages."""


def queue_depths(app: Celery) -> dict[str, int]:
    """Ready (not yet delivered) messages per queue; a queue that does not exist yet counts 0.

    A passive declare never creates or changes a queue, so this is safe against any deployment; each
    queue gets its own channel because RabbitMQ closes the channel on a passive declare of a missing queue.
    """
    names = list(WORK_QUEUES)
    if is_amqp_broker(str(app.conf.broker_url)):
        names += [dead_letter_queue_name(name) for name in WORK_QUEUES]
    depths: dict[str, int] = {}
    try:
        with app.connection_for_read() as connection:
            connection.ensure_connection(max_retries=1)
            for name in names:
                channel = connection.channel()
                try:
                    declared = channel.queue_declare(queue=name, passive=True)
                    depths[name] = int(declared.message_count)
                except ChannelError:
                    depths[name] = 0
                finally:
                    # Already closed by the broker after a failed passive declare: nothing to do.
                    with contextlib.suppress(Exception):
                        channel.close()
    except (OperationalError, OSError) as exc:
        raise BrokerUnavailable(f"broker unreachable: {type(exc).__name__}") from exc
    return depths
