"""One module per CDS service: its definition (hook, prefetch templates) and its card builder."""
