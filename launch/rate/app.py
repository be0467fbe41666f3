"""The rating page (Flask): one item from two runs side by side, order random, names hidden.

The page never names a run: sides are "left" and "right", pictures come from
`/image/<offer>/<side>` and what was shown lives server-side in the store's `offers` table.
Raters are told apart by `?rater=NAME`, else the server's `--rater`, else a cookie, else a fresh
anonymous id (kept in the cookie).
"""

from __future__ import annotations

import random
import re
import secrets

from flask import Flask, abort, redirect, render_template, request, send_file, url_for

from launch.rate.samples import Comparison, RunSamples, comparisons
from launch.rate.store import CHOICES, Offer, Store, now, pair_key

COOKIE = "genlab_rater"
RATER = re.compile(r"[\w.@+-]{1,64}")
# key -> choice; shown on the page beside each button.
KEYS = {"ArrowLeft": "left", "1": "left", "ArrowDown": "tie", "2": "tie"}
KEYS |= {"ArrowRight": "right", "3": "right"}


def create_app(
    runs: dict[str, RunSamples],
    store: Store,
    default_rater: str | None = None,
    rng: random.Random | None = None,
) -> Flask:
    """The app serving `runs` (by key) and writing to `store`."""
    app = Flask(__name__)
    todo = comparisons(list(runs.values()))
    rng = rng or random.SystemRandom()

    def rater_of_request() -> str:
        name = request.args.get("rater") or default_rater or request.cookies.get(COOKIE)
        if name is None:
            return f"anonymous-{secrets.token_hex(4)}"
        if not RATER.fullmatch(name):
            abort(400, f"rater {name[:80]!r}: use 1 to 64 letters, digits or . @ + - _")
        return name

    def next_offer(rater: str) -> tuple[Offer | None, int]:
        """The pair this rater is looking at (a reload shows it again) or a new one drawn from
        those the rater has not judged; and how many are judged."""
        judged = store.judged(rater)
        left = [c for c in todo if (pair_key(c.first, c.second), c.item) not in judged]
        done = len(todo) - len(left)
        for offer in store.pending(rater):
            if _still_offered(offer, runs, left):
                return offer, done
            store.drop_offer(offer.id)  # served by another catalogue, or answered meanwhile
        if not left:
            return None, done
        chosen = rng.choice(left)
        first, second = (chosen.first, chosen.second)
        if rng.random() < 0.5:
            first, second = second, first
        offer = Offer(
            secrets.token_urlsafe(12), rater, now(), first, second, chosen.item,
            _relative(runs[first], chosen.item), _relative(runs[second], chosen.item),
        )  # fmt: skip
        store.add_offer(offer)
        return offer, done

    @app.get("/")
    def page():
        rater = rater_of_request()
        offer, done = next_offer(rater)
        context = sides = None
        if offer is not None:
            context = runs[offer.left_run].contexts[offer.item]
            sides = [
                _side(offer, "left", runs[offer.left_run], context.prefix),
                _side(offer, "right", runs[offer.right_run], context.prefix),
            ]
        html = render_template(
            "rate.html",
            rater=rater,
            offer=offer,
            context=context,
            sides=sides,
            done=done,
            total=len(todo),
            keys=KEYS,
        )
        response = app.make_response(html)
        response.set_cookie(COOKIE, rater, max_age=365 * 86400, samesite="Lax", httponly=True)
        response.headers["Cache-Control"] = "no-store"  # a back button must not re-show a pair
        return response

    @app.post("/judge")
    def judge():
        offer_id, choice = request.form.get("offer", ""), request.form.get("choice", "")
        if choice not in CHOICES:
            abort(400, f"choice {choice[:20]!r}: allowed {', '.join(CHOICES)}")
        offer = store.offer(offer_id)
        store.answer(offer_id, choice)  # committed before the reply; unknown offers add nothing
        rater = offer.rater if offer else rater_of_request()
        return redirect(url_for("page", rater=rater), code=303)

    @app.get("/image/<offer_id>/<side>")
    def image(offer_id: str, side: str):
        offer = store.offer(offer_id)
        if offer is None or side not in ("left", "right"):
            abort(404)
        run = runs.get(offer.left_run if side == "left" else offer.right_run)
        shown = run.items.get(offer.item) if run else None
        if shown is None or shown.text is not None:
            abort(404)
        return send_file(shown.file, mimetype="image/png", max_age=0)

    return app


def _relative(run: RunSamples, item: str) -> str:
    return str(run.items[item].file.relative_to(run.workdir))


def _still_offered(offer: Offer, runs: dict[str, RunSamples], left: list[Comparison]) -> bool:
    if offer.left_run not in runs or offer.right_run not in runs:
        return False
    pair = pair_key(offer.left_run, offer.right_run)
    unanswered = any(pair_key(c.first, c.second) == pair and c.item == offer.item for c in left)
    return (
        unanswered
        and offer.item in runs[offer.left_run].items
        and _relative(runs[offer.left_run], offer.item) == offer.left_file
        and _relative(runs[offer.right_run], offer.item) == offer.right_file
    )


def _side(offer: Offer, side: str, run: RunSamples, prefix: str) -> dict:
    shown = run.items[offer.item]
    if shown.text is None:
        return {"name": side, "image": url_for("image", offer_id=offer.id, side=side)}
    return {"name": side, "prefix": prefix, "text": shown.text}
