"""Sharing points: how the tasks' features meet, one file per point.

Each file holds everything about its point behind the interface of
`mtlc.sharing.point` (option model, topology, fx emission, drawing, learned-value
readout); registering it is one line in `mtlc.registry` (`SHARING` for an encoder
stage's `encoder.sharing`, `DECODERS` for `decoder.type`). The files import no torch at
module level, so validating a spec and building its topology stay torch-free.
"""
