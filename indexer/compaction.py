"""Which segments to merge: a tiered policy over adjacent segments (log-structured merging).

Segments are ordered by the versions they hold. A segment's tier is how many times it is
`factor` times larger than one commit; `factor` adjacent segments of one tier merge into one
segment of the next. Every vector is therefore rewritten about log_factor(archive / commit)
times, so writes per added vector grow only with the logarithm of the archive (not linearly,
as when every commit rewrote the whole index), and no merge makes a segment larger than
`max_vectors` (which bounds a merge's memory). A segment whose removed fraction reaches
`purge_ratio` is rewritten on its own so that tombstones do not pile up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class SegmentStat:
    """What the policy needs to know of a live segment."""

    id: int
    first_version: int
    ntotal: int  # vectors in the file
    dead: int  # of which removed

    @property
    def live(self) -> int:
        return self.ntotal - self.dead


@dataclass(frozen=True)
class MergePolicy:
    """Tiered merging. `unit` is the size of one commit (the pipeline's commit size)."""

    factor: int = 10
    unit: int = 2048
    max_vectors: int = 4_000_000
    purge_ratio: float = 0.2

    def tier(self, live: int) -> int:
        if live <= self.unit:
            return 0
        return math.floor(math.log(live / self.unit, self.factor) + 1e-9)


def plan_merge(segments: list[SegmentStat], policy: MergePolicy) -> list[int] | None:
    """The ids of the next adjacent run to merge (or one segment to purge), or None."""
    ordered = sorted(segments, key=lambda s: s.first_version)
    for seg in ordered:
        if seg.ntotal and seg.dead / seg.ntotal >= policy.purge_ratio:
            return [seg.id]
    if policy.factor < 2:
        return None
    run: list[SegmentStat] = []
    for seg in ordered:
        if run and policy.tier(seg.live) != policy.tier(run[0].live):
            run = []
        run.append(seg)
        if len(run) == policy.factor:
            if sum(s.live for s in run) <= policy.max_vectors:
                return [s.id for s in run]
            run = run[1:]
    return None


def plan_full(segments: list[SegmentStat], policy: MergePolicy) -> list[int] | None:
    """For an explicit full compaction: the next adjacent run that fits in `max_vectors`."""
    ordered = sorted(segments, key=lambda s: s.first_version)
    for seg in ordered:
        if seg.ntotal and seg.dead / seg.ntotal >= policy.purge_ratio:
            return [seg.id]
    run: list[SegmentStat] = []
    total = 0
    for seg in ordered:
        if run and total + seg.live > policy.max_vectors:
            if len(run) > 1:
                return [s.id for s in run]
            run, total = [], 0
        run.append(seg)
        total += seg.live
    if len(run) > 1:
        return [s.id for s in run]
    if len(run) == 1 and run[0].dead:
        return [run[0].id]
    return None
