"""What a bearer-token check costs on the request path: ``AccessControl.authenticate`` per call.

The check hashes the presented token (SHA-256) and compares the digest with every configured token's
(``hmac.compare_digest``), so it grows with the number of tokens. This prints microseconds per check
for a matching token, a wrong one of the same length, and a missing one (a refusal also raises and
counts), with 1, 10 and 100 tokens configured; then the comparison alone (``TokenSet.match``) for
the first token, the last one and a wrong one, whose times a constant-time comparison keeps equal
within noise. CPU time of this process (``time.process_time``), best of five runs.

    python bench/bench_auth.py [--calls 200000]
"""

from __future__ import annotations

import argparse
import secrets
import time

from pyserve.security import AccessControl, AccessSettings, Scope, Unauthenticated


def per_call_us(access: AccessControl, header: str | None, calls: int) -> float:
    """Best of five: CPU microseconds per ``authenticate`` call with ``header``."""
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        for _ in range(calls):
            try:
                access.authenticate(Scope.INFERENCE, header)
            except Unauthenticated:
                pass
        best = min(best, time.process_time() - start)
    return best / calls * 1e6


def match_us(access: AccessControl, token: str, calls: int) -> float:
    """Best of five: CPU microseconds per ``TokenSet.match`` of ``token``."""
    best = float("inf")
    match = access.tokens.match
    for _ in range(5):
        start = time.process_time()
        for _ in range(calls):
            match(token)
        best = min(best, time.process_time() - start)
    return best / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000, help="checks per run (default 200000)")
    args = parser.parse_args()
    print("tokens,check_match_us,check_wrong_us,check_missing_us,compare_first_us,compare_last_us,compare_wrong_us")
    for count in (1, 10, 100):
        tokens = [secrets.token_urlsafe(32) for _ in range(count)]
        env = ",".join(f"t{i}:{t}" for i, t in enumerate(tokens))
        access = AccessControl(AccessSettings(env_tokens=env, inference=True))
        stranger = secrets.token_urlsafe(32)
        match = per_call_us(access, f"Bearer {tokens[-1]}", args.calls)
        wrong = per_call_us(access, f"Bearer {stranger}", args.calls)
        missing = per_call_us(access, None, args.calls)
        # An early exit would make the first token the fastest and a wrong one the slowest.
        first, last, other = (match_us(access, t, args.calls) for t in (tokens[0], tokens[-1], stranger))
        print(f"{count},{match:.2f},{wrong:.2f},{missing:.2f},{first:.2f},{last:.2f},{other:.2f}")


if __name__ == "__main__":
    main()
