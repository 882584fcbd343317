"""Test data shared by several test modules (test modules never import each other).

- ``JSON_TEXT``: hypothesis strategy of JSON texts with whitespace, escapes and
  odd number spellings (gojson and profiles tests).
- ``REGISTRY``, ``permit_typed``: the ioID registry Permit (EIP-712) typed data
  (profiles and agent tests).
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

# --- hypothesis JSON text with whitespace, escapes and odd number spellings ---

WS = st.text(alphabet=" \t\r\n", max_size=2)
NUMBER = st.from_regex(
    r"-?(0|[1-9][0-9]{0,19})(\.[0-9]{1,4})?([eE][+-]?[0-9]{1,3})?", fullmatch=True
)
RAW_CHAR = st.characters(
    blacklist_categories=("Cs",), blacklist_characters='"\\' + "".join(map(chr, range(32)))
) | st.sampled_from(["<", ">", "&", "\u2028", "\u2029", "é", "€", "😀", "\x7f", "\ufffd"])
ESCAPE = st.sampled_from(['\\"', "\\\\", "\\/", "\\b", "\\f", "\\n", "\\r", "\\t"]) | st.builds(
    lambda cp, upper: "\\u" + (f"{cp:04X}" if upper else f"{cp:04x}"),
    st.integers(0, 0xFFFF),
    st.booleans(),
)
STRING = st.lists(RAW_CHAR | ESCAPE, max_size=8).map(lambda parts: '"' + "".join(parts) + '"')
LEAF = NUMBER | STRING | st.sampled_from(["true", "false", "null"])


def _array(children):
    return st.tuples(st.lists(st.tuples(WS, children, WS), max_size=4), WS).map(
        lambda t: "[" + (",".join(a + v + b for a, v, b in t[0]) or t[1]) + "]"
    )


def _object(children):
    member = st.tuples(WS, STRING, WS, WS, children, WS)
    return st.tuples(st.lists(member, max_size=4), WS).map(
        lambda t: (
            "{" + (",".join(a + k + b + ":" + c + v + d for a, k, b, c, v, d in t[0]) or t[1]) + "}"
        )
    )


JSON_TEXT = st.tuples(
    WS, st.recursive(LEAF, lambda ch: _array(ch) | _object(ch), max_leaves=12), WS
).map(lambda t: (t[0] + t[1] + t[2]).encode())


# --- ioID registry Permit (EIP-712) ---

REGISTRY = {
    4689: "0x04e4655Cf258EC802D17c23ec6112Ef7d97Fa2aF",
    4690: "0x0A7e595C7889dF3652A19aF52C18377bF17e027D",
}


def permit_typed(owner: str, nonce: int, chain: int) -> dict[str, Any]:
    return {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            "Permit": [{"name": "owner", "type": "address"}, {"name": "nonce", "type": "uint256"}],
        },
        "primaryType": "Permit",
        "domain": {
            "name": "ioIDRegistry",
            "version": "1",
            "chainId": chain,
            "verifyingContract": REGISTRY[chain],
        },
        "message": {"owner": owner, "nonce": nonce},
    }
