"""Sharing points: how the tasks' features meet, one file per type.

The topology decides how many copies of a stage exist (`layout` on the option model
in `mtlc.spec.schema`) and where a *unit* sits between them. A sharing point's file
implements that unit: a function

    emit(em: Emitter, unit: str) -> dict[str, fx.Node]

that reads the unit's topology attributes (`em.attrs(unit)`: `type`, `options`,
`tasks`, `shape`, `stage`) and its incoming values (`em.inputs(unit)`: predecessor →
{task: fx node}), writes its modules and fx nodes through the emitter (so every node
is labelled with its block, kind and owning task), and returns, per task, the node
that task reads next. Decoder units may also return intermediate predictions under
`task:tag` keys. Registering the type is one line in `mtlc.registry`.
"""
