"""Charsets, tokenizers and evaluation protocols (masterocr.charset)."""

import string

import pytest
import torch

from masterocr.charset import (BUILTIN_CHARSETS, PROTOCOLS, AttentionTokenizer, CTCTokenizer, get_protocol,
                               load_charset, normalize_label, protocol_36, protocol_62, protocol_94,
                               protocol_raw)

CJK = "".join(chr(c) for c in range(0x4E00, 0x4E00 + 3000))


# ---- charsets -------------------------------------------------------------------------------------------

def test_builtin_charsets():
    assert load_charset("36") == string.digits + string.ascii_lowercase
    assert load_charset("62") == string.digits + string.ascii_lowercase + string.ascii_uppercase
    chars94 = load_charset("94")
    assert len(chars94) == 94 and " " not in chars94
    assert set(chars94) == {chr(c) for c in range(33, 127)}
    assert len(BUILTIN_CHARSETS["36"]) == 36


def test_space_is_optional():
    assert " " not in load_charset("36")
    with_space = load_charset("36", with_space=True)
    assert with_space == load_charset("36") + " "
    assert load_charset("ab ", with_space=True) == "ab "  # never added twice


def test_charset_from_string_and_list_removes_duplicates():
    assert load_charset("abca") == "abc"
    assert load_charset(["x", "y", "x"]) == "xy"
    with pytest.raises(ValueError):
        load_charset("")


def test_charset_file_with_thousands_of_cjk_characters(tmp_path):
    path = tmp_path / "chinese.txt"
    path.write_text("\n".join(CJK) + "\n", encoding="utf-8")
    chars = load_charset(str(path))
    assert chars == CJK and len(chars) == 3000
    tok = AttentionTokenizer(str(path), max_length=10)
    assert tok.num_classes == 3001
    text = CJK[5] + CJK[2999] + CJK[0]
    ids = tok.encode([text])
    assert tok.decode_ids(ids[0, 1:].tolist()) == text


def test_charset_file_space_line_and_bad_line(tmp_path):
    good = tmp_path / "c.txt"
    good.write_text("a\n \nb\n", encoding="utf-8")  # a line holding one space is the space character
    assert load_charset(str(good)) == "a b"
    bad = tmp_path / "bad.txt"
    bad.write_text("a\nbc\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2"):
        load_charset(str(bad))


def test_ids_are_fixed_by_the_charset(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("\n".join("0123456789abcdefghijklmnopqrstuvwxyz"), encoding="utf-8")
    a, b = AttentionTokenizer("36"), AttentionTokenizer(str(path))
    assert a.charset == b.charset
    assert torch.equal(a.encode(["hello", "42"]), b.encode(["hello", "42"]))


# ---- tokenizers -----------------------------------------------------------------------------------------

def test_attention_special_ids():
    tok = AttentionTokenizer("36")
    assert tok.eos_id == 0
    assert tok.bos_id == 37 and tok.pad_id == 38
    assert tok.num_classes == 37 and len(tok) == 39
    ids = tok.encode(["ab"], max_length=4)
    assert ids.tolist() == [[37, 11, 12, 0, 38, 38]]  # BOS a b EOS PAD PAD; '0'..'9' are ids 1..10


def test_ctc_special_ids():
    tok = CTCTokenizer("36")
    assert tok.blank_id == 0 and tok.num_classes == 37
    targets, lengths = tok.encode(["ab", "c"])
    assert targets.tolist() == [[11, 12], [13, 0]]
    assert lengths.tolist() == [2, 1]


def _one_hot(ids, num_classes, p=0.9):
    probs = torch.full((1, len(ids), num_classes), (1 - p) / (num_classes - 1))
    for t, i in enumerate(ids):
        probs[0, t, i] = p
    return probs


@pytest.mark.parametrize("charset", ["36", "62", "94"])
def test_attention_round_trip(charset):
    tok = AttentionTokenizer(charset)
    labels = ["0", "hello42", tok.charset[-5:], tok.charset[:25]]
    ids = tok.encode(labels)
    assert ids.shape == (4, 27)
    for row, label in zip(ids, labels):
        assert tok.decode_ids(row[1:].tolist()) == label
        steps = row[1: len(label) + 2].tolist()  # characters then EOS, as a decoder would predict them
        decoded = tok.decode(_one_hot(steps + [tok.eos_id], tok.num_classes))[0]
        assert decoded.text == label
        assert len(decoded.char_probs) == len(label)
        assert decoded.confidence == pytest.approx(0.9 ** (len(label) + 1), rel=1e-4)  # chars and EOS


def test_ctc_decode_collapses_repeats_and_blanks():
    tok = CTCTokenizer("36")
    a, b = tok.charset.index("a") + 1, tok.charset.index("b") + 1
    results = tok.decode(_one_hot([a, a, 0, a, b, b, 0], tok.num_classes))
    assert results[0].text == "aab"
    assert len(results[0].char_probs) == 3


def test_long_max_length():
    tok = AttentionTokenizer("94", max_length=300)
    label = ("LongText-" * 30)[:290]
    ids = tok.encode([label])
    assert ids.shape == (1, 302)
    assert tok.decode_ids(ids[0, 1:].tolist()) == label


def test_encode_rejects_too_long_and_unknown_characters():
    tok = AttentionTokenizer("36", max_length=5)
    with pytest.raises(ValueError, match="longer"):
        tok.encode(["abcdef"])
    with pytest.raises(ValueError, match="outside the charset"):
        tok.encode(["AB"])
    assert tok.in_charset("abc") and not tok.in_charset("ab!")


# ---- normalisation and protocols ------------------------------------------------------------------------

def test_normalize_never_deletes_non_latin_text():
    cjk = load_charset(CJK)
    assert normalize_label(" " + CJK[:4] + " ", cjk) == CJK[:4]
    assert normalize_label("Привет", "94") == "Привет"  # kept: filtering is a separate, counted step
    decomposed = "Cafe\u0301"
    assert normalize_label(decomposed, "94") == "Caf\u00e9"  # NFC composes, never folds to "Cafe"
    assert normalize_label("straße", "62") == "straße"


def test_normalize_lowercases_only_for_case_insensitive_charsets():
    assert normalize_label("Hello", "36") == "hello"
    assert normalize_label("Hello", "62") == "Hello"
    assert normalize_label("Hello", "94") == "Hello"
    assert normalize_label("ПРИВЕТ", load_charset(CJK)) == "ПРИВЕТ"  # no cased letters: left alone


@pytest.mark.parametrize("fn, text, expected", [
    (protocol_36, "Hello, World! 42", "helloworld42"),
    (protocol_62, "Hello, World! 42", "HelloWorld42"),
    (protocol_94, "Hello, World! 42", "Hello,World!42"),
    (protocol_raw, "  Hello, World!  ", "Hello, World!"),
    (protocol_raw, "Cafe\u0301 北京", "Caf\u00e9 北京"),
    (protocol_36, "北京", ""),
])
def test_protocols(fn, text, expected):
    assert fn(text) == expected


def test_protocol_registry():
    assert set(PROTOCOLS) == {"36", "62", "94", "raw"}
    assert get_protocol(36) is protocol_36
    with pytest.raises(ValueError, match="unknown protocol"):
        get_protocol("37")
