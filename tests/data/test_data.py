"""Data: the stdlib corpus and its tokenize labels, text/HF corpora and their errors,
synthetic tasks, minimal pairs, the training mix and the evaluation helpers."""
import math

import numpy as np
import pytest
import torch

import probe
from probe.data import (TASKS, CodeCorpus, DataMix, MinimalPair, TokenStream, byte_labels, evaluate_minimal_pairs,
                        get_task, hf_corpus, pairs_from_dataset, text_corpus, unigram_bpb)
from probe.data.code_corpus import SPLITS, TOKEN_TYPES, list_files, split_of
from probe.errors import InputError
from probe.evaluate import evaluate_bpb, task_scores, text_logprobs

T = {name: i for i, name in enumerate(TOKEN_TYPES)}


# -- stdlib corpus labels ------------------------------------------------------------------
def test_byte_labels_by_hand():
    src = 'def f(a, b=[1, (2)]):\n    s = "é#"  # note\n    return s\n'
    data = src.encode()
    lab = byte_labels(src)
    assert all(len(v) == len(data) for v in lab.values())
    at = lambda text, nth=0: [i for i in range(len(data)) if data.startswith(text.encode(), i)][nth]  # noqa: E731
    assert lab["token_type"][at("def")] == T["keyword"] and lab["token_type"][at("f(")] == T["name"]
    assert lab["token_type"][at("1")] == T["number"] and lab["token_type"][at("=")] == T["op"]
    assert lab["token_type"][at("\n")] == T["newline"] and lab["token_type"][at(" ")] == T["other"]
    # bracket depth after each byte: ( -> 1, [ -> 2, ( -> 3, ) -> 2, ] -> 1, ) -> 0
    depth = lab["bracket_depth"]
    assert [depth[at("(")], depth[at("[")], depth[at("(", 1)], depth[at(")")], depth[at("]")], depth[at(")", 1)]] \
        == [1, 2, 3, 2, 1, 0]
    # the string holds a two-byte é and a '#' that is not a comment
    s0 = at('"')
    assert lab["in_string"][s0 : s0 + 5].tolist() == [1] * 5 and lab["in_string"][s0 + 5] == 0  # "é#": 5 bytes
    assert lab["in_comment"][at("#")] == 0 and lab["in_comment"][at("# note")] == 1
    assert lab["token_type"][at("# note") + 3] == T["comment"]
    # indentation level: 0 on the def line, 1 in the body (from the start of the line)
    assert lab["indent"][at("def")] == 0 and lab["indent"][at("    s")] == 1 and lab["indent"][at("return")] == 1
    assert lab["token_type"][at("    s")] == T["indent"]
    # column: bytes within the line; after the two bytes of é, "#" is at column 11
    assert lab["column"][at("def")] == 0 and lab["column"][at("return")] == 4
    assert lab["column"][at("#\"")] == 11


def test_split_is_a_pure_function_of_the_path():
    names = [f"pkg/mod{i}.py" for i in range(400)]
    splits = [split_of(n) for n in names]
    assert splits == [split_of(n) for n in names]
    share = {s: splits.count(s) / len(names) for s in SPLITS}
    assert 0.85 < share["train"] < 0.95 and share["val"] > 0.02 and share["test"] > 0.02
    assert split_of("os.py") == split_of("os.py")


def _tree(tmp_path, files):
    for name, content in files.items():
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
    return tmp_path


def test_code_corpus_skips_untokenizable_files_with_a_count(tmp_path):
    good = {f"m{i}.py": f"x{i} = ({i}, [1])\n" for i in range(60)}
    bad = {"bad_string.py": 'x = """never closed\n', "bad_coding.py": b"# -*- coding: nonsense -*-\nx = 1\n",
           "site-packages/ignored.py": "y = 1\n"}
    root = _tree(tmp_path, {**good, **bad})
    assert "site-packages/ignored.py" not in list_files(root)
    seen, skipped = set(), set()
    for split in SPLITS:
        corpus = CodeCorpus(split, root=root)
        seen |= {f.relpath for f in corpus.files}
        skipped |= {rel for rel, _ in corpus.skipped}
        for f in corpus.files:
            assert split_of(f.relpath) == split
        stream = corpus.stream()
        assert stream.n_bytes == sum(f.n_bytes for f in corpus.files)
        assert len(stream) == stream.n_bytes + len(corpus.files)  # one separator per file
    assert seen == set(good) and skipped == {"bad_string.py", "bad_coding.py"}


def test_stdlib_corpus_is_deterministic_and_labelled():
    a = CodeCorpus("val", max_files=3)
    b = CodeCorpus("val", max_files=3)
    assert [f.relpath for f in a.files] == [f.relpath for f in b.files] and len(a.files) == 3
    assert all(split_of(f.relpath) == "val" for f in a.files)
    tokens, labels = next(a.labelled())
    assert len(tokens) == len(labels["column"]) == a.files[0].n_bytes
    assert np.array_equal(a.stream().tokens, b.stream().tokens)
    with pytest.raises(InputError, match="Unknown split"):
        CodeCorpus("dev")


# -- text corpora ------------------------------------------------------------------------
def test_text_file_and_folder(tmp_path):
    (tmp_path / "a.txt").write_text("hello world\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("héllo\n")
    (tmp_path / "skip.bin").write_bytes(b"\x00\xff")
    one = text_corpus(tmp_path / "a.txt")
    assert one.tokens.tolist() == list(b"hello world\n") + [256] and one.n_bytes == 12
    both = text_corpus(tmp_path)
    assert both.n_bytes == 12 + len("héllo\n".encode()) and both.meta["files"] == 2


@pytest.mark.parametrize("case, match", [
    ("missing", "does not exist"), ("empty_file", "is empty"), ("empty_folder", "no text files"),
    ("latin1", "not UTF-8.*offset 1"), ("unreadable", "Cannot read"), ("short", "shorter than one"),
])
def test_text_corpus_errors(tmp_path, case, match):
    path = tmp_path / "x.txt"
    if case == "empty_file":
        path.write_text("  \n")
    elif case == "empty_folder":
        path = tmp_path / "folder"
        path.mkdir()
    elif case == "latin1":
        path.write_bytes("né".encode("latin-1"))
    elif case == "unreadable":
        from probe.data.text_corpus import read_text_file

        with pytest.raises(InputError, match=match):
            read_text_file(tmp_path)  # a folder cannot be read as a file
        return
    elif case == "short":
        path.write_text("tiny")
    with pytest.raises(InputError, match=match):
        text_corpus(path, min_tokens=65)


def test_hf_corpus_in_memory():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": ["first doc", "second"], "id": [1, 2]})
    stream = hf_corpus(ds)
    assert stream.tokens.tolist() == list(b"first doc") + [256] + list(b"second") + [256]
    assert hf_corpus(ds, max_documents=1).n_bytes == 9
    assert hf_corpus(datasets.DatasetDict({"train": ds}), split="train").n_bytes == 15
    with pytest.raises(InputError, match="no column 'body'.*text, id"):
        hf_corpus(ds, text_field="body")
    with pytest.raises(InputError, match="shorter than one sequence"):
        hf_corpus(ds, min_tokens=100)


def test_token_stream_windows_split_and_save(tmp_path):
    s = TokenStream(np.arange(100) % 256, 100)
    assert s.windows(9).shape == (11, 10) and s.windows(9, max_windows=2).tolist()[1][0] == 9
    head, tail = s.split_tail(0.2, min_tokens=5)
    assert len(head) == 80 and len(tail) == 20 and head.n_bytes + tail.n_bytes == 100
    with pytest.raises(InputError, match="too short"):
        s.split_tail(0.2, min_tokens=30)
    with pytest.raises(InputError, match="shorter than one training sequence"):
        s.sample(np.random.default_rng(0), 2, 100)
    back = TokenStream.load(s.save(tmp_path / "s.safetensors"))
    assert np.array_equal(back.tokens, s.tokens) and back.n_bytes == 100
    with pytest.raises(InputError, match="empty"):
        TokenStream(np.zeros(0), 0)


def test_unigram_bpb_by_hand():
    train = TokenStream(np.array([0, 0, 0, 1]), 4)
    val = TokenStream(np.array([1, 0, 1]), 3)
    p = np.array([4, 2]) / 6  # add-one counts over a vocab of 2
    expected = -(np.log2(p[0]) + np.log2(p[1])) / 2
    assert unigram_bpb(train, val, vocab_size=2) == pytest.approx(expected)


# -- synthetic tasks ---------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_examples_are_deterministic_and_consistent(name):
    task = get_task(name)
    a, b = task.examples(30, seed=3), task.examples(30, seed=3)
    assert [e.text for e in a] == [e.text for e in b]
    assert [e.text for e in a] != [e.text for e in task.examples(30, seed=4)]
    for e in a:
        assert e.tokens == [256] + list(e.text.encode())
        for p, c, k in zip(e.answer_positions, e.correct, e.contrast):
            assert e.tokens[p + 1] == c != k and e.text[p] == chr(c)
        assert e.good == e.text and e.bad != e.good and len(e.bad) in (len(e.good), len(e.good) - 1, len(e.good) + 1)
        for values in e.labels.values():
            assert len(values) == len(e.tokens)


def test_agreement_semantics():
    for e in get_task("agreement").examples(200, seed=0):
        verb = e.text[e.meta["verb_pos"]:].split(" ")[0]
        assert verb in (("are", "were", "have") if e.meta["plural"] else ("is", "was", "has"))
        assert e.bad.split(" ")[len(e.text[: e.meta["verb_pos"]].split(" ")) - 1] != verb
        assert e.meta["mismatch"] == (bool(e.meta["attractor_plural"]) and e.meta["attractor_plural"][-1] != e.meta["plural"])
    mism = [e.meta["mismatch"] for e in get_task("agreement").examples(400, seed=1)]
    assert 0.2 < np.mean(mism) < 0.6  # attractors that disagree are common


def test_recall_induction_brackets_semantics():
    for e in get_task("recall").examples(50, seed=0):
        pairs = dict(tok[:1] and (tok[0], tok[1]) for tok in e.text.split("|")[0].split(" "))
        for p, src in zip(e.answer_positions, e.meta["source_positions"]):
            assert pairs[e.text[p - 1]] == e.text[p] == e.text[src]
    for e in get_task("induction").examples(50, seed=0):
        left, right = e.text.split("|")
        assert left == right and len(e.answer_positions) == len(left)
    starts = set()
    for e in get_task("induction", start="random").examples(200, seed=0):
        # the copy starts at a given random letter; the one answer is the letter after it, whose
        # position in the copy differs from its position in the string (so position alone fails)
        left, right = e.text.split("|")
        k = e.meta["start"]
        starts.add(k)
        assert right == left[k:] and len(right) >= 2 and e.answer_positions == [len(left) + 2]
        assert e.text[e.answer_positions[0]] == left[k + 1] == e.text[e.meta["source_positions"][0]]
        assert e.labels["copy_index"][len(left) + 2] == k and len(e.labels["copy_index"]) == len(e.tokens)
        p = e.answer_positions[0]
        assert e.bad[:p] == e.good[:p] and e.bad[p] != e.good[p] and e.bad[p + 1:] == e.good[p + 1:]
    assert len(starts) > 5
    with pytest.raises(ValueError, match="start must be"):
        get_task("induction", start="middle")
    closer = {"(": ")", "[": "]", "{": "}"}
    for e in get_task("brackets").examples(50, seed=0):
        stack = []
        for ch in e.text.split("|")[0]:
            stack.append(ch) if ch in closer else stack.pop()
        assert e.text.split("|")[1] == "".join(closer[c] for c in reversed(stack))
        assert e.labels["depth"][len(e.text.split("|")[0]) + 1] == len(stack) == e.meta["open_depth"]
        assert e.labels["depth"][-1] == 0


def test_unknown_task():
    with pytest.raises(InputError, match="Unknown task 'recal'.*'recall'"):
        get_task("recal")


# -- evaluation with a model whose predictions are known ------------------------------------
def _constant_model(favour: dict[int, float]):
    """A model whose logits are the bias b_U at every position (all weights zero)."""
    model = probe.HookedLM(probe.ModelConfig(d_model=8, layout=["qrnn"], n_heads=2, d_mlp=8))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for tok, value in favour.items():
            model.b_U[tok] = value
    return model


def test_minimal_pairs_and_text_logprobs():
    model = _constant_model({ord("a"): 4.0})
    logp = torch.log_softmax(model.b_U.detach(), -1)
    lp = text_logprobs(model, ["ab", "bbb"])
    assert lp == pytest.approx([float(logp[97] + logp[98]), float(3 * logp[98])], abs=1e-5)
    result = evaluate_minimal_pairs(model, [("aaa", "bbb"), MinimalPair("bb", "ab", "x")])
    assert result.correct.tolist() == [True, False] and result.accuracy == 0.5
    assert result.by_phenomenon() == {"": 1.0, "x": 0.0} and len(result.to_frame()) == 2
    with pytest.raises(InputError, match="identical"):
        MinimalPair("a", "a")
    with pytest.raises(InputError, match="no pairs"):
        evaluate_minimal_pairs(model, [])


def test_pairs_from_dataset_and_blimp_code_path(monkeypatch):
    datasets = pytest.importorskip("datasets")
    blimp = datasets.Dataset.from_dict({"sentence_good": ["the dogs are here.", "a cat is here."],
                                        "sentence_bad": ["the dogs is here.", "a cat are here."],
                                        "UID": ["agr", "agr"]})
    pairs = pairs_from_dataset(blimp)
    assert [p.phenomenon for p in pairs] == ["agr", "agr"] and pairs[1].bad == "a cat are here."
    calls = []

    def fake_load(name, subset, split):
        calls.append((name, subset, split))
        return blimp

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    from probe.data.minimal_pairs import blimp_pairs

    got = blimp_pairs("regular_plural_subject_verb_agreement_1", max_pairs=1)
    assert calls == [("nyu-mll/blimp", "regular_plural_subject_verb_agreement_1", "train")] and len(got) == 1
    with pytest.raises(InputError, match="no column 'good'"):
        pairs_from_dataset(blimp, good_field="good")


def test_task_scores_and_bpb_with_known_predictions():
    model = _constant_model({ord("3"): 5.0, ord("7"): 2.0})
    ex = get_task("recall").examples(40, seed=0)
    scores = task_scores(model, ex)
    answers = [(c, k) for e in ex for c, k in zip(e.correct, e.contrast)]
    bias = model.b_U.detach()
    assert scores["answers"] == len(answers)
    assert scores["top1"] == pytest.approx(np.mean([c == ord("3") for c, _ in answers]))
    assert scores["pair_accuracy"] == pytest.approx(np.mean([bias[c] > bias[k] for c, k in answers]))
    stream = TokenStream(np.array([97, 98, 51, 97, 51, 51, 55, 97, 98]), 9)
    logp = torch.log_softmax(bias, -1)
    expected = -float(sum(logp[t] for t in stream.tokens[1:9])) / 8 / math.log(2)
    assert evaluate_bpb(model, stream, seq_len=4) == pytest.approx(expected, rel=1e-5)


def test_data_mix_rows():
    text = TokenStream(np.full(500, 120), 500)
    mix = DataMix(text, ["induction", "brackets"], task_fraction=0.5)
    a = mix.batch(np.random.default_rng([0, 7]), 32, 40)
    b = mix.batch(np.random.default_rng([0, 7]), 32, 40)
    assert a.shape == (32, 41) and np.array_equal(a, b)
    task_rows = [r for r in a if r[0] == 256]
    assert 5 < len(task_rows) < 27 and all((r == 120).all() for r in a if r[0] != 256)
    assert (DataMix(text).batch(np.random.default_rng(0), 4, 10) == 120).all()
    with pytest.raises(InputError, match="no tasks"):
        DataMix(text, [], task_fraction=0.3)
    with pytest.raises(InputError, match="shorter than one"):
        DataMix(TokenStream(np.ones(5), 5)).check(seq_len=16)
