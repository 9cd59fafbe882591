"""Data: tokenizers, corpora (stdlib code, text files, HF datasets), labelled synthetic tasks,
minimal pairs, the training mix and curricula of mixes."""
from probe.data.code_corpus import CodeCorpus, byte_labels, stdlib_stream
from probe.data.corpus import TokenStream, unigram_bpb
from probe.data.curriculum import Curriculum
from probe.data.minimal_pairs import MinimalPair, blimp_pairs, pairs_from_dataset
from probe.data.mix import DataMix
from probe.data.tasks import TASKS, Task, TaskExample, get_task
from probe.data.text_corpus import hf_corpus, text_corpus
from probe.tokenizers import ByteTokenizer, HFTokenizer, get_tokenizer


def __getattr__(name: str):
    """``evaluate_minimal_pairs`` runs a model, so it lives in :mod:`probe.evaluate`; this package names it
    too, imported on first use (data sits below evaluation)."""
    if name == "evaluate_minimal_pairs":
        from probe.evaluate import evaluate_minimal_pairs

        return evaluate_minimal_pairs
    raise AttributeError(f"module 'probe.data' has no attribute {name!r}")

__all__ = [
    "ByteTokenizer", "CodeCorpus", "Curriculum", "DataMix", "HFTokenizer", "MinimalPair", "TASKS", "Task",
    "TaskExample", "TokenStream", "blimp_pairs", "byte_labels", "evaluate_minimal_pairs", "get_task", "get_tokenizer",
    "hf_corpus", "pairs_from_dataset", "stdlib_stream", "text_corpus", "unigram_bpb",
]
