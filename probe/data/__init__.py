"""Data: tokenizers, corpora (stdlib code, text files, HF datasets), labelled synthetic tasks,
minimal pairs, the training mix and curricula of mixes."""
from probe.data.code_corpus import CodeCorpus, byte_labels, stdlib_stream
from probe.data.corpus import TokenStream, unigram_bpb
from probe.data.curriculum import Curriculum
from probe.data.minimal_pairs import MinimalPair, blimp_pairs, evaluate_minimal_pairs, pairs_from_dataset
from probe.data.mix import DataMix
from probe.data.tasks import TASKS, Task, TaskExample, get_task
from probe.data.text_corpus import hf_corpus, text_corpus
from probe.tokenizers import ByteTokenizer, HFTokenizer, get_tokenizer

__all__ = [
    "ByteTokenizer", "CodeCorpus", "Curriculum", "DataMix", "HFTokenizer", "MinimalPair", "TASKS", "Task",
    "TaskExample", "TokenStream", "blimp_pairs", "byte_labels", "evaluate_minimal_pairs", "get_task", "get_tokenizer",
    "hf_corpus", "pairs_from_dataset", "stdlib_stream", "text_corpus", "unigram_bpb",
]
