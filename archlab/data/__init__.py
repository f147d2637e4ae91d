"""Real-text data: corpus readers -> tokenised memory-mapped shards with a manifest -> packed, deterministic batches.

* :mod:`archlab.data.sources`: documents from files, directories, jsonl, parquet, ``datasets.save_to_disk`` dirs.
* :mod:`archlab.data.shards`: tokenise once (document boundaries kept with EOS), write shards + ``manifest.json``.
* :mod:`archlab.data.sampler`: packed windows of T+1 tokens, sampled as a pure function of (seed, split, rank, step).
* :mod:`archlab.data.streams`: the (seed, split, rank, step) -> RNG derivation every task's batches use.
"""
