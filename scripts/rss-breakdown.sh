#!/usr/bin/env bash
# Where a process's resident memory is: VmRSS split into anonymous (heap,
# stacks), file-backed and shmem pages, then resident KiB per mapped file
# (summed over its mappings), largest first.
#
#   scripts/rss-breakdown.sh PID [N]     # N files to list (default 25)
#
# File-backed pages (shared libraries, the binary's text) count in VmRSS but
# are shared with every other process mapping the same file; anonymous pages
# are the process's own. Reads /proc/PID/status and /proc/PID/smaps (root,
# or the process's owner).
set -euo pipefail
pid=${1:?usage: $0 PID [N]}
n=${2:-25}
[[ -r /proc/$pid/smaps ]] || { echo "cannot read /proc/$pid/smaps" >&2; exit 1; }

printf '%s (pid %s)\n' "$(tr '\0' ' ' </proc/"$pid"/cmdline | cut -c1-100)" "$pid"
grep -E '^(VmRSS|RssAnon|RssFile|RssShmem|Threads):' /proc/"$pid"/status |
    awk '{printf "  %-9s %8s %s\n", $1, $2, $3}'
echo "  resident KiB per mapping (file or [anon]/[heap]/[stack]):"
awk '
    /^[0-9a-f]+-[0-9a-f]+ / { name = ($6 == "") ? "[anon]" : $6; next }
    /^Rss:/ { rss[name] += $2 }
    END { for (k in rss) if (rss[k] > 0) printf "%8d  %s\n", rss[k], k }
' /proc/"$pid"/smaps | sort -rn | head -n "$n"
