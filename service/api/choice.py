"""What a request asks to run on, read the same way by every protocol: the variant (an override, else the A/B
split by sticky client key) and the compute budget, each from the protocol's own field (v1's query, v2's and
gRPC's ``parameters``) before the header (HTTP) or metadata (gRPC) of the same meaning."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request

from service.accounting import RequestAccount
from service.dataplane import DataPlane
from service.errors import Unprocessable
from service.variants import Variant

# the headers read after the protocol's own fields variant, client_id and budget
HEADERS = ("x-variant", "x-client-id", "x-compute-budget")
RAW_HEADERS = (b"x-variant", b"x-client-id", b"x-compute-budget")  # for a pure-ASGI layer's header dict


def choose_variant(
    plane: DataPlane,
    account: RequestAccount | None,
    asked: Callable[[str], str | None],
    header: Callable[[Any], str | None],
    model: str | None = None,
    names: tuple[Any, Any, Any] = HEADERS,
) -> tuple[Variant, str | None]:
    """The variant the request runs on (for tensor protocols, the ``model`` named: a variant, or the virtual A/B
    model), noted on its ``account`` (if it has one); and the budget it asks for. ``asked(field)`` reads the
    protocol's own field (it may refuse a malformed one), ``header(name)`` the header or metadata ``names`` gives
    for it. The budget is read after the variant is chosen, so that a request wrong in both is refused for its
    variant."""
    override = asked("variant") or header(names[0])
    client_key = asked("client_id") or header(names[1])
    chosen = plane.route(override, client_key) if model is None else plane.tensor_model(model, override, client_key)
    if account is not None:
        account.variant = chosen.name
    return chosen, asked("budget") or header(names[2])


def refuse_repeated(
    request: Request, names: tuple[str, ...] = ("variant", "budget", "top_k"), headers: tuple[str, ...] = HEADERS
) -> None:
    """A query or header that gives one of ``names`` or ``headers`` twice (``?variant=full&variant=slim``, two
    ``X-Variant`` lines) is ambiguous: refused, rather than run on whichever value the framework happens to keep."""
    _given_once("query", names, request.query_params.getlist)
    _given_once("header", headers, request.headers.getlist)


def refuse_repeated_metadata(pairs: list[tuple[str, str]]) -> None:
    """gRPC's form of the same rule: a routing metadata key given twice."""
    _given_once("metadata", HEADERS, lambda name: [value for key, value in pairs if key == name])


def _given_once(where: str, names: tuple[str, ...], values_of: Callable[[str], list[str]]) -> None:
    for name in names:
        values = values_of(name)
        if len(values) > 1:
            given = ", ".join(values)[:80]
            raise Unprocessable(f"the {where} {name!r} is given {len(values)} times ({given}); give it once")
