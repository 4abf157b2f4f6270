#!/usr/bin/env bash
# The library adapters against their framework's own cost, under wrk in the peer harness:
# the tower layer on hyper (examples/hyper_proxy.rs) against the same hyper proxy without
# it (`--bare`), and a Pingora proxy wrapped in `StepUpProxy`
# (examples/pingora_existing_proxy.rs) against the same proxy bare; both in one run each
# (bench/peer/klarna-stepup.sh with EXTRA_ONLY=1: no nginx peers). Ratios, PASS/FAIL:
#   GET passthrough CPU µs/req, wrapped ÷ bare            ≤ 1.02
#   Klarna POST CPU µs/req, wrapped ÷ bare passthrough POST ≤ 1.1
# Written to <run dir>/adapters.md. Env: ADAPTERS="hyper pingora", NO_BUILD=1, RUNS=1 (the
# median ratio over RUNS runs), DURATION, WARMUP, CONNS, THREADS as for run.sh.
set -euo pipefail
die() { echo "adapters.sh: $*" >&2; exit 1; }
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
[[ $TARGET_DIR == /* ]] || TARGET_DIR=$ROOT/$TARGET_DIR
RUN=${PEER_RUN_DIR:-$TARGET_DIR/peer-bench}
[[ $RUN == /* ]] || RUN=$ROOT/$RUN
mkdir -p "$RUN/adapters"
ADAPTERS=${ADAPTERS:-hyper pingora}
RUNS=${RUNS:-1}
[[ $RUNS =~ ^[0-9]+$ ]] && (( RUNS >= 1 && RUNS <= 9 )) || die "RUNS must be 1..9"

if [[ ${NO_BUILD:-0} != 1 ]]; then
  echo "== cargo build --release --examples"
  (cd "$ROOT" && cargo build --release --example hyper_proxy \
    && cargo build --release --features pingora --example pingora_existing_proxy)
fi
EX=$TARGET_DIR/release/examples
rm -f "$RUN"/adapters/*.tsv
for a in $ADAPTERS; do
  case $a in
    hyper) bin=$EX/hyper_proxy ;;
    pingora) bin=$EX/pingora_existing_proxy ;;
    *) die "unknown adapter $a (hyper, pingora)" ;;
  esac
  [[ -x $bin ]] || die "no $bin (build it, or drop NO_BUILD)"
  for i in $(seq "$RUNS"); do
    echo "== $a: wrapped and bare, run $i/$RUNS"
    EXTRA_ONLY=1 PACED=0 STEPUP_NAME="$a-stepup" STEPUP_CMD="'$bin' \$LISTEN \$UPSTREAM" \
      EXTRA2_NAME="$a-bare" EXTRA2_CMD="'$bin' \$LISTEN \$UPSTREAM --bare" EXTRA2_PASSTHROUGH=1 \
      RESULT_TSV="$RUN/adapters/$a-$i.tsv" "$HERE/klarna-stepup.sh" > "$RUN/adapters/$a-$i.log" 2>&1 \
      || { tail -20 "$RUN/adapters/$a-$i.log" >&2; die "$a failed (log: $RUN/adapters/$a-$i.log)"; }
    grep -E '^\| (x1|x2|y1|y2) ' "$RUN/adapters/$a-$i.log" || true
  done
done

python3 - "$RUN/adapters" "$RUNS" > "$RUN/adapters.md" <<'PY'
import csv, glob, os, statistics, sys
d, runs = sys.argv[1], int(sys.argv[2])
def num(r, k):
    try: return float(r[k])
    except (KeyError, ValueError, TypeError): return None
print("# The library adapters against their framework bare\n")
print(f"Median of {runs} run(s); each ratio from one run (wrapped and bare measured together).\n")
print("| adapter | GET CPU wrapped / bare | goal | POST (Klarna) CPU wrapped / bare passthrough POST | goal | wrapped POST µs/req | bare POST µs/req | errors | max other % |")
print("|---|---|---|---|---|---|---|---|---|")
by = {}
for path in sorted(glob.glob(os.path.join(d, "*-*.tsv"))):
    with open(path) as f:
        by.setdefault(os.path.basename(path).rsplit("-", 1)[0], []).append(
            {r["case"]: r for r in csv.DictReader(f, delimiter="\t")})
for a, runs_ in by.items():
    def med(x, y, k="proxy_us_cpu_per_req"):
        v = [num(r.get(x, {}), k) / num(r.get(y, {}), k) for r in runs_
             if num(r.get(x, {}), k) and num(r.get(y, {}), k)]
        return statistics.median(v) if v else None
    g, p = med("x1", "y1"), med("x2", "y2")
    verdict = lambda v, lim: "–" if v is None else ("PASS" if v <= lim + 1e-9 else "FAIL")
    errs = sum(int(num(r.get(c, {}), "errors") or 0) for r in runs_ for c in ("x1", "x2", "y1", "y2"))
    other = max((num(r[c], "other_pct") or 0) for r in runs_ for c in r)
    wc = statistics.median([num(r["x2"], "proxy_us_cpu_per_req") for r in runs_ if "x2" in r])
    bc = statistics.median([num(r["y2"], "proxy_us_cpu_per_req") for r in runs_ if "y2" in r])
    f = lambda v: "–" if v is None else f"{v:.2f}"
    print(f"| {a} | {f(g)} | ≤ 1.02 {verdict(g, 1.02)} | {f(p)} | ≤ 1.1 {verdict(p, 1.1)} | {wc} | {bc} | {errs} | {other:.0f} |")
PY
cat "$RUN/adapters.md"
echo "== written: $RUN/adapters.md"
