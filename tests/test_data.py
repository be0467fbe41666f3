"""Text data: deterministic per-step batches, per-process shares, the char tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SHAKESPEARE

from train.data.text import TokenWindows, load_text, split_tokens
from train.data.tokenizers import CharTokenizer, load_tokenizer, save_tokenizer
from train.errors import UserError


@pytest.fixture(scope="module")
def text() -> str:
    return load_text(str(SHAKESPEARE))


def test_local_file_loads_whole_and_tokenizer_round_trips(text, tmp_path):
    assert len(text) == 1_115_394 and text.startswith("First Citizen:")
    tokenizer = CharTokenizer.fit(text)
    assert tokenizer.vocab_size == 65
    assert tokenizer.decode(tokenizer.encode(text[:500])) == text[:500]
    save_tokenizer(tokenizer, tmp_path)
    assert load_tokenizer(tmp_path).chars == tokenizer.chars


def test_split_is_ninety_ten(text):
    tokens = CharTokenizer.fit(text).encode(text)
    train, val = split_tokens(tokens, 0.1)
    assert len(train) == int(0.9 * len(tokens)) and len(train) + len(val) == len(tokens)


def test_batches_are_pure_functions_of_seed_and_step():
    windows = TokenWindows(np.arange(1000, dtype=np.int32), block_size=16)
    a, b = windows.batch(0, 7, 8), windows.batch(0, 7, 8)
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
    assert not np.array_equal(a["inputs"], windows.batch(0, 8, 8)["inputs"])
    assert not np.array_equal(a["inputs"], windows.batch(1, 7, 8)["inputs"])
    np.testing.assert_array_equal(a["targets"][:, :-1], a["inputs"][:, 1:])  # shifted by one


def test_processes_read_disjoint_shares_of_the_global_batch():
    windows = TokenWindows(np.arange(1000, dtype=np.int32), block_size=16)
    whole = windows.batch(3, 5, 8)["inputs"]
    shares = [windows.batch(3, 5, 8, process_index=i, process_count=4)["inputs"] for i in range(4)]
    assert all(s.shape == (2, 16) for s in shares)
    np.testing.assert_array_equal(np.concatenate(shares), whole)


def test_missing_file_and_too_long_block():
    with pytest.raises(UserError, match="no such file"):
        load_text("/nonexistent/input.txt")
    with pytest.raises(UserError, match="too long"):
        TokenWindows(np.arange(10, dtype=np.int32), block_size=16)
