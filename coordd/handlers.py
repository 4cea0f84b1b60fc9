"""Which code answers each request: `Handlers.handle` is the one entry point, and matches on the request type.

A refusal raises Refused, which the server turns into an Error reply with a stable
code. The answers themselves are in the modules named for them:

- sending.py: send, batch, broadcast (validation.py checks them, admission.py admits them);
- queries.py: history, get, status, agents;
- sending.py also: resend;
- retry_cancel.py: retry, cancel, retry_many, cancel_many;
- pauses.py: pause, resume;
- inbox_requests.py: inbox, ack;
- gui/requests.py: onboard, pointer; reload.py: reload. ping and metrics are answered here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from coordctl import protocol as p
from coordd import __version__
from coordd.config import Config
from coordd.delivery import Delivery
from coordd.hooks import NO_HOOKS, Hooks
from coordd.inbox_requests import InboxRequests
from coordd.model import Refused
from coordd.pauses import Pauses
from coordd.queries import Queries
from coordd.retry_cancel import RetryCancel
from coordd.sending import Sending
from coordd.validation import check_ids

# What is still answered while shutting down: nothing that makes new work.
WHILE_STOPPING = (p.Ping, p.StatusRequest, p.History, p.Get, p.Thread, p.Agents, p.Metrics)


class Handlers:
    def __init__(
        self,
        config: Config,
        delivery: Delivery,
        sending: Sending,
        queries: Queries,
        retry_cancel: RetryCancel,
        inbox: InboxRequests,
        pauses: Pauses,
        reload: Callable[[], Awaitable[p.Reloaded]],
        observer: Hooks = NO_HOOKS,
        metrics_text: Callable[[], str] = str,
    ) -> None:
        self.delivery = delivery
        self.sending = sending
        self.queries = queries
        self.retry_cancel = retry_cancel
        self.inbox = inbox
        self.pauses = pauses
        self.reload = reload  # the `reload` request: coordd.reload.Reloader.reload
        self.observer = observer  # metrics and watch events
        self.metrics_text = metrics_text  # the `metrics` request: the Prometheus exposition
        self.configure(config)
        self.accepting = True

    def configure(self, config: Config) -> None:
        """Serve `config` from now on (at start, and at each reload)."""
        self.config = config
        self.config_error: str | None = None  # why the last reload failed
        self.agents = {a.id: a for a in config.agents}
        for part in (self.sending, self.queries, self.retry_cancel, self.inbox, self.pauses, self.observer):
            part.configure(config)

    def reload_failed(self, error: str) -> None:
        """A reload was refused: the config in use stays, and `status` shows why."""
        self.config_error = error

    def stop_accepting(self) -> None:
        """Shutting down: only reads are answered from now on."""
        self.accepting = False

    def knows(self, agent: str) -> bool:
        """A configured agent, or one whose queued messages wait for it to be configured again."""
        return agent in self.agents or agent in self.delivery.orphans

    async def handle(self, req: p.Request) -> p.Reply:
        if not self.accepting and not isinstance(req, WHILE_STOPPING):
            raise Refused("shutting_down", "coordd is shutting down and takes no new work: retry once it is back")
        check_ids(req)
        match req:
            case p.Send():
                return await self.sending.send(req)
            case p.Batch():
                return p.Ids(ids=await self.sending.batch(req))
            case p.Broadcast():
                return p.Ids(ids=await self.sending.broadcast(req))
            case p.History():
                return await self.queries.history(req)
            case p.Get():
                return await self.queries.get(req.message_id)
            case p.Retry():
                return await self.retry_cancel.retry(req.message_id)
            case p.Cancel():
                return await self.retry_cancel.cancel(req.message_id)
            case p.RetryMany():
                return await self.retry_cancel.retry_many(req)
            case p.CancelMany():
                return await self.retry_cancel.cancel_many(req)
            case p.Resend():
                return await self.sending.resend(req)
            case p.Pause():
                return await self.pauses.pause(req)
            case p.Resume():
                return await self.pauses.resume(req)
            case p.Inbox():
                return await self.inbox.inbox(req)
            case p.Ack():
                return await self.inbox.ack(req)
            case p.ReplyRequest():
                return await self.sending.reply(req)
            case p.Thread():
                return await self.queries.thread(req)
            case p.StatusRequest():
                return await self.queries.status(self.config_error)
            case p.Agents():
                return self.queries.agent_list()
            case p.Metrics():
                return p.MetricsText(text=self.metrics_text())
            case p.Ping():
                return p.Pong(version=__version__, protocol=p.PROTOCOL_VERSION)
            case p.Reload():
                return await self.reload()
            case p.Onboard() | p.Pointer():
                from coordd.gui.requests import handle_gui  # loaded on first use: no GUI code otherwise

                return await handle_gui(req, self.delivery)
        raise Refused("bad_request", f"unhandled request {type(req).__name__}")  # pragma: no cover
