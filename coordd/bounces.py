"""Bounces: the notice a sending agent gets when its message ends `failed` or is cancelled.

A bounce is a message like any other (stored, queued, delivered through the sender's own
transport, counted, watched), with kind "bounce", reply_to the message it reports (so it
joins that message's thread) and no sender: it comes from coordd, not from an agent, so
nothing can take it for an agent's message and a `reply` to it is refused. Having no
sender, a bounce that fails in turn never bounces.

Whoever records the outcome (coordd.delivery for a failure, coordd.retry_cancel for a
cancel) stores the bounce in the same transaction, so the bounce exists exactly when the
outcome is recorded: once, whatever crash comes between.
"""

from __future__ import annotations

from coordd.model import BOUNCE, Record, preview


def notice(rec: Record, error: str | None, message_id: int, now: float) -> Record:
    """The bounce, with id `message_id`, telling rec's sender that rec failed with `error` (None: it was
    cancelled)."""
    head = preview(rec.body)
    if head != rec.body.strip():  # cut short, or more lines follow
        head += "…"
    if error is None:
        subject = f"cancelled: #{rec.id} to {rec.agent}"
        why = "it was cancelled by an operator before it was delivered"
        why += f" (its last attempt had failed: {rec.error})." if rec.error else "."
        todo = "ask your operator why, or send it again if it is still needed."
    else:
        subject = f"not delivered: #{rec.id} to {rec.agent}"
        why = f"it failed after {rec.tries} attempts: {error}"
        todo = (
            f"check that {rec.agent} is running and reachable (`coordctl status`), then "
            f"`coordctl retry {rec.id}` sends the message again."
        )
    body = "\n".join(
        (
            f"Your message #{rec.id} to {rec.agent} was not delivered.",
            f'Message: "{head}"',
            f"Why: {why}",
            f"What to do: {todo}",
        )
    )
    return Record(
        id=message_id,
        agent=rec.sender or "",  # (only a message with a sender bounces)
        body=body,
        priority=rec.priority,
        created=now,
        kind=BOUNCE,
        reply_to=rec.id,
        thread=rec.thread or rec.id,
        subject=subject,
    )
