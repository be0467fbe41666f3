"""`genlab rate` without a browser: which samples are paired, bad input as one line, the page's
flow through Flask's test client (blind, never the same pair twice, every answer committed), and
the win rates and Bradley–Terry scores `genlab compare --ratings` adds."""

from __future__ import annotations

import csv
import math
import random
import socket
import sqlite3
from pathlib import Path

import pytest
from rate_workdirs import family_runs, make_run

from launch.cli import main as genlab_main
from launch.compare import compare
from launch.rate.app import create_app
from launch.rate.samples import comparisons, load_runs
from launch.rate.stats import Game, bradley_terry, groups, wilson
from launch.rate.store import Offer, Store, now


def _one_line_error(capsys, argv: list[str]) -> str:
    """`genlab rate ARGV` in this process; its error line (exit code 2 asserted)."""
    with pytest.raises(SystemExit) as ended:
        genlab_main(["rate", *argv])
    code = ended.value.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_each_family_offers_its_newest_samples_matched_across_runs(tmp_path):
    paths = family_runs(tmp_path)
    runs = load_runs([str(p) for p in paths.values()])
    lm = runs[str(paths["lm_a"].resolve())]
    assert lm.items['prompt:"\\n"'].text == "ROMEO: hi"  # the newest step, not step 10
    assert lm.contexts['prompt:"\\n"'].prefix == "\n"
    mt = runs[str(paths["mt_b"].resolve())]
    assert mt.items["source:Two men are playing chess."].text == "Zwei."
    assert mt.contexts["source:Two men are playing chess."].lines == (
        ("source", "Two men are playing chess."),
        ("reference", "Zwei Männer spielen Schach."),
    )
    gan = runs[str(paths["gan_b"].resolve())]
    assert list(gan.items) == ["image:samples"]  # `genlab sample`'s PNG left out
    assert gan.items["image:samples"].file.name == "samples_0000020.png"
    offered = comparisons(list(runs.values()))
    found = {(Path(c.first).name, Path(c.second).name, c.item) for c in offered}
    assert found == {
        ("lm_a", "lm_b", 'prompt:"\\n"'),
        ("mt_a", "mt_b", "source:A dog runs across the grass."),
        ("mt_a", "mt_b", "source:Two men are playing chess."),
        ("gan_a", "gan_b", "image:samples"),
    }  # never across kinds


def _bad_inputs(tmp_path: Path) -> list[tuple[list[str], str]]:
    paths = family_runs(tmp_path)
    lm_a, lm_b, gan_a = (str(paths[k]) for k in ("lm_a", "lm_b", "gan_a"))
    bare = tmp_path / "bare"
    bare.mkdir()
    empty = make_run(tmp_path, "empty", "lm", {})
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database, just bytes" * 200)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE judgements (who TEXT, verdict TEXT)")
    store = str(tmp_path / "r.sqlite")
    return [
        (["--runs", lm_a, str(tmp_path / "nope"), "--store", store], "nope: no such run folder"),
        (["--runs", lm_a, str(bare), "--store", store], "bare: not a genlab run (no config.json)"),
        (["--runs", lm_a, str(empty), "--store", store], "empty: no samples to rate"),
        (["--runs", lm_a, "--store", store], "rating needs at least two runs; got 1"),
        (["--runs", lm_a, lm_a, "--store", store], "named twice"),
        (["--runs", lm_a, gan_a, "--store", store], "no two runs share a sample to compare"),
        (["--runs", lm_a, lm_b, "--store", str(garbage)], "(file is not a database)"),
        (["--runs", lm_a, lm_b, "--store", str(other)], "not a genlab ratings store"),
        (["--runs", lm_a, lm_b, "--store", str(tmp_path)], "is a folder"),
        (["--runs", lm_a, lm_b, "--store", str(tmp_path / "no" / "r.sqlite")], "no such folder"),
        (["--runs", lm_a, lm_b, "--store", store, "--port", "70000"], "--port=70000 is not"),
        (["--runs", lm_a, lm_b, "--store", store, "--rater", "a b"], "--rater='a b'"),
        (["--runs", lm_a, lm_b], "the following arguments are required: --store"),
    ]


def test_bad_input_is_one_line_error(capsys, tmp_path):
    for argv, words in _bad_inputs(tmp_path):
        assert words in _one_line_error(capsys, argv), argv
    garbage = tmp_path / "garbage.sqlite"
    assert garbage.read_bytes().startswith(b"this is not a database")  # left as it was


def test_a_port_in_use_is_one_line_error(capsys, tmp_path):
    paths = family_runs(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        argv = ["--runs", str(paths["lm_a"]), str(paths["lm_b"]), "--store"]
        err = _one_line_error(capsys, [*argv, str(tmp_path / "r.sqlite"), "--port", port])
    assert f"--port {port}" in err and "in use" in err


def _offer_id(html: str) -> str | None:
    marker = 'name="offer" value="'
    return html.split(marker)[1].split('"')[0] if marker in html else None


def _rows(path: Path) -> list[tuple]:
    """The judgements as a fresh connection sees them (so: committed)."""
    with sqlite3.connect(path) as db:
        return db.execute(
            "SELECT rater, left_run, right_run, item, left_file, right_file, choice FROM judgements"
        ).fetchall()


def test_the_page_is_blind_and_never_shows_a_rater_the_same_pair_twice(tmp_path):
    paths = family_runs(tmp_path / "runs")
    runs = load_runs([str(p) for p in paths.values()])
    store_path = tmp_path / "r.sqlite"
    app = create_app(runs, Store(store_path), rng=random.Random(0))
    client = app.test_client()

    first = client.get("/?rater=ann").get_data(as_text=True)
    assert "0 of 4 judged" in first and "ann" in first
    assert not any(name in first for name in (*paths, str(tmp_path)))  # run names hidden
    assert _offer_id(client.get("/").get_data(as_text=True)) == _offer_id(first)  # a reload

    wrong = client.post("/judge", data={"offer": _offer_id(first), "choice": "sideways"})
    assert wrong.status_code == 400
    reply = client.post("/judge", data={"offer": _offer_id(first), "choice": "left"})
    assert reply.status_code == 303 and reply.location.endswith("/?rater=ann")
    assert len(_rows(store_path)) == 1  # committed before the reply
    client.post("/judge", data={"offer": _offer_id(first), "choice": "right"})  # a double submit
    assert [r[-1] for r in _rows(store_path)] == ["left"]

    seen = {_offer_id(first)}
    for choice in ("right", "tie", "left"):
        page = client.get("/").get_data(as_text=True)
        offer = _offer_id(page)
        assert offer not in seen
        seen.add(offer)
        if "<img" in page:  # pictures come by offer and side, never by run
            picture = client.get(f"/image/{offer}/left")
            assert picture.mimetype == "image/png" and picture.data[:4] == b"\x89PNG"
        client.post("/judge", data={"offer": offer, "choice": choice})
    assert "Nothing left to rate" in client.get("/").get_data(as_text=True)

    rows = _rows(store_path)
    assert sorted(r[-1] for r in rows) == ["left", "left", "right", "tie"]
    assert {r[0] for r in rows} == {"ann"}
    pairs = {(frozenset((r[1], r[2])), r[3]) for r in rows}
    assert len(pairs) == 4 and all(r[1] != r[2] for r in rows)
    assert all(r[4].startswith("samples/") and r[5].startswith("samples/") for r in rows)

    restarted = create_app(runs, Store(store_path)).test_client()  # same store, new server
    assert "Nothing left to rate" in restarted.get("/?rater=ann").get_data(as_text=True)
    assert "0 of 4 judged" in restarted.get("/?rater=bob").get_data(as_text=True)


def test_sides_are_drawn_at_random_and_runs_may_be_named_relative(tmp_path, monkeypatch):
    family_runs(tmp_path / "runs")
    monkeypatch.chdir(tmp_path)
    runs = load_runs(["runs/gan_a", "runs/gan_b"])
    store_path = tmp_path / "r.sqlite"
    client = create_app(runs, Store(store_path), rng=random.Random(3)).test_client()
    for rater in range(12):
        page = client.get(f"/?rater=r{rater}").get_data(as_text=True)
        assert client.get(f"/image/{_offer_id(page)}/right").data[:4] == b"\x89PNG"
    with sqlite3.connect(store_path) as db:
        lefts = {Path(row[0]).name for row in db.execute("SELECT left_run FROM offers")}
        files = {row[0] for row in db.execute("SELECT left_file FROM offers")}
    assert lefts == {"gan_a", "gan_b"} and files == {"samples/samples_0000020.png"}


def test_wilson_interval_and_bradley_terry_scores():
    low, high = wilson(5, 10)
    assert math.isclose(low, 0.2366, abs_tol=1e-4) and math.isclose(high, 0.7634, abs_tol=1e-4)
    assert wilson(0, 4)[0] == 0.0 and wilson(4, 4)[1] == 1.0
    games = [Game("a", "b", 1.0)] * 3 + [Game("b", "a", 1.0)]
    s = bradley_terry(["a", "b"], games)
    assert math.isclose(s["a"] - s["b"], math.log(3), rel_tol=0.02)  # the weak prior aside
    assert math.isclose(s["a"] + s["b"], 0.0, abs_tol=1e-9)
    tied = bradley_terry(["a", "b"], [Game("a", "b", 0.5)] * 4)
    assert abs(tied["a"]) < 1e-6  # a tie is half a win each way
    unbeaten = bradley_terry(["a", "b"], [Game("a", "b", 1.0)] * 5)
    assert math.isfinite(unbeaten["a"]) and unbeaten["a"] > 1
    assert groups(["a", "b", "c", "d"], [Game("c", "d", 1), Game("a", "b", 0)]) == [
        {"a", "b"},
        {"c", "d"},
    ]


def _judge(store: Store, rater: str, left: Path, right: Path, item: str, choice: str) -> None:
    offer = Offer(
        f"{rater}-{left.name}-{right.name}", rater, now(), str(left.resolve()),
        str(right.resolve()), item, "samples/x", "samples/y",
    )  # fmt: skip
    store.add_offer(offer)
    assert store.answer(offer.id, choice)


def test_compare_adds_win_rates_and_bradley_terry_scores(tmp_path):
    paths = family_runs(tmp_path / "runs")
    lm_a, lm_b, gan_a, gan_b = (paths[k] for k in ("lm_a", "lm_b", "gan_a", "gan_b"))
    store = Store(tmp_path / "r.sqlite")
    _judge(store, "r1", lm_a, lm_b, "prompt", "left")
    _judge(store, "r2", lm_b, lm_a, "prompt", "right")
    _judge(store, "r3", lm_a, lm_b, "prompt", "tie")
    _judge(store, "r1", gan_a, gan_b, "image:samples", "right")
    out = tmp_path / "report"
    compare([str(lm_a), str(lm_b), str(gan_a), str(gan_b)], None, out, tmp_path / "r.sqlite")
    rows = {r["run"]: r for r in csv.DictReader((out / "compare.csv").open())}
    assert float(rows["lm_a"]["win rate (ties ½)"]) == pytest.approx(2.5 / 3)
    assert rows["lm_a"]["judgements"] == "3"
    low, high = wilson(2.5, 3)
    assert float(rows["lm_a"]["win rate 95% low"]) == pytest.approx(low)
    assert float(rows["lm_a"]["win rate 95% high"]) == pytest.approx(high)
    scores = {run: float(rows[run]["Bradley–Terry score"]) for run in ("lm_a", "lm_b")}
    assert scores["lm_a"] > 0 > scores["lm_b"]
    assert float(rows["gan_b"]["win rate (ties ½)"]) == 1.0
    markdown = (out / "compare.md").read_text()
    assert "| Bradley–Terry score |" in markdown and "tie as half a win" in markdown
    assert "2 separate groups" in markdown  # LMs and GANs were never compared

    compare([], None, tmp_path / "from_store", tmp_path / "r.sqlite")  # the rated runs
    assert len(list(csv.DictReader((tmp_path / "from_store" / "compare.csv").open()))) >= 4


def test_compare_ratings_bad_input_is_one_line(tmp_path):
    from train.errors import UserError

    paths = family_runs(tmp_path / "runs")
    runs = [str(paths["lm_a"]), str(paths["lm_b"])]
    with pytest.raises(UserError, match="no such file"):
        compare(runs, None, tmp_path / "o", tmp_path / "missing.sqlite")
    Store(tmp_path / "empty.sqlite")
    with pytest.raises(UserError, match="holds no judgements yet"):
        compare(runs, None, tmp_path / "o", tmp_path / "empty.sqlite")
    store = Store(tmp_path / "r.sqlite")
    _judge(store, "r1", paths["gan_a"], paths["gan_b"], "image:samples", "left")
    with pytest.raises(UserError, match="no judgement is between two of the compared runs"):
        compare(runs, None, tmp_path / "o", tmp_path / "r.sqlite")
    (tmp_path / "bad.sqlite").write_bytes(b"\0garbage" * 100)
    with pytest.raises(UserError, match="not a usable ratings store"):
        compare(runs, None, tmp_path / "o", tmp_path / "bad.sqlite")
