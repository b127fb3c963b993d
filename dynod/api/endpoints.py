"""The API's endpoints: (method, path) -> handler. Each handler parses the body into a typed
request (api/requests.py) and calls a service; none reads the state or the log itself."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from dynod.api import attach, formation_endpoints, frames, streams
from dynod.api.config_endpoints import ConfigEndpoints
from dynod.api.requests import (
    CreateApp,
    CreateSpace,
    RunRequest,
    SetFeature,
    StopDynos,
    TrustedRange,
)
from dynod.api.wire import Answer, Request
from dynod.control.apps import AppService
from dynod.control.configvars import ConfigService
from dynod.control.dynos import DynoService
from dynod.control.formation import FormationService
from dynod.control.spaces import SpaceService
from dynod.control.status import StatusReport
from dynod.errors import DynodError, NotFound
from dynod.inspect.service import InspectService
from dynod.logs.book import LogBook
from dynod.trace.service import TraceService
from dynod.trace.spec import TraceRequest
from netns import record

MAX_SECONDS = 86_400  # a grace period or a tail longer than a day is a typo

Handler = Callable[..., Awaitable[Answer]]


@dataclass(frozen=True)
class Services:
    """What the API calls: built whole by compose.build."""

    spaces: SpaceService
    apps: AppService
    dynos: DynoService
    status: StatusReport
    log: LogBook
    inspect: InspectService
    config: ConfigService
    traces: TraceService
    formation: FormationService
    startup: record.Recording = field(default_factory=record.Recording)  # what start-up did


class Endpoints:
    def __init__(self, services: Services) -> None:
        self.spaces = services.spaces
        self.apps = services.apps
        self.dynos = services.dynos
        self.status = services.status
        self.log = services.log
        self.inspect = services.inspect
        self.startup = services.startup
        self.config = ConfigEndpoints(services.config)
        self.traces = services.traces
        self.formation = services.formation
        self._table = self._routes()

    def _routes(self) -> list[tuple[str, tuple[str, ...], Handler]]:
        """(method, path after /v1, handler); each `*` segment is passed to the handler."""
        return [
            ("GET", ("status",), self._status),
            ("GET", ("spaces",), self._spaces),
            ("POST", ("spaces",), self._create_space),
            ("GET", ("spaces", "*"), self._space),
            ("DELETE", ("spaces", "*"), self._destroy_space),
            ("GET", ("spaces", "*", "trusted-ips"), self._trusted_ips),
            ("POST", ("spaces", "*", "trusted-ips"), self._add_trusted_ip),
            ("DELETE", ("spaces", "*", "trusted-ips", "*"), self._remove_trusted_ip),
            ("GET", ("apps",), self._apps),
            ("POST", ("apps",), self._create_app),
            ("GET", ("apps", "*"), self._app),
            ("DELETE", ("apps", "*"), self._destroy_app),
            ("GET", ("apps", "*", "features"), self._features),
            ("PUT", ("apps", "*", "features", "*"), self._set_feature),
            ("POST", ("apps", "*", "dynos"), self._run),
            ("DELETE", ("apps", "*", "dynos"), self._stop),
            ("DELETE", ("apps", "*", "dynos", "*"), self._stop),
            ("GET", ("dynos",), self._dynos),
            ("GET", ("logs",), self._logs),
            ("GET", ("inspect",), self._inspect),
            ("GET", ("explain", "daemon"), self._explain_daemon),
            *self.config.routes(),
            ("POST", ("traces",), self._trace),
            *formation_endpoints.routes(self.formation),
        ]

    async def route(self, r: Request) -> Answer:
        endpoint = f"/{'/'.join(r.path)}"
        if r.path[:1] != ["v1"]:
            raise NotFound(f"no such endpoint {endpoint}", "see the API list in api.py")
        allowed: list[str] = []
        for method, pattern, handler in self._table:
            args = _match(pattern, r.path[1:])
            if args is None:
                continue
            if method == r.method:
                return await handler(r, *args)
            allowed.append(method)
        if allowed:
            raise DynodError(
                f"{endpoint} does not take {r.method}",
                f"it takes {' or '.join(allowed)}; see the API list in api.py",
                status=405,
            )
        raise NotFound(f"no such endpoint {r.method} {endpoint}", "see the API list in api.py")

    async def _status(self, r: Request) -> Answer:
        return 200, self.status.status()

    # ---------------------------------------------------------------- spaces
    async def _spaces(self, r: Request) -> Answer:
        return 200, await self.spaces.infos()

    async def _create_space(self, r: Request) -> Answer:
        return 201, await self.spaces.create(CreateSpace.from_body(r.body))

    async def _space(self, r: Request, space: str) -> Answer:
        return 200, await self.spaces.info_of(space)

    async def _destroy_space(self, r: Request, space: str) -> Answer:
        await self.spaces.destroy(space)
        return 200, {"destroyed": space}

    async def _trusted_ips(self, r: Request, space: str) -> Answer:
        return 200, await self.spaces.trusted(space)

    async def _add_trusted_ip(self, r: Request, space: str) -> Answer:
        return 201, await self.spaces.trust(TrustedRange.from_body(space, r.body))

    async def _remove_trusted_ip(self, r: Request, space: str, cidr: str) -> Answer:
        return 200, await self.spaces.distrust(TrustedRange(space, cidr))

    # ---------------------------------------------------------------- apps
    async def _apps(self, r: Request) -> Answer:
        return 200, await self.apps.infos()

    async def _create_app(self, r: Request) -> Answer:
        return 201, await self.apps.create(CreateApp.from_body(r.body))

    async def _app(self, r: Request, app: str) -> Answer:
        return 200, await self.apps.info_of(app)

    async def _destroy_app(self, r: Request, app: str) -> Answer:
        return 200, await self.apps.destroy(app)

    async def _features(self, r: Request, app: str) -> Answer:
        return 200, await self.apps.features(app)

    async def _set_feature(self, r: Request, app: str, feature: str) -> Answer:
        return 200, await self.apps.set_feature(SetFeature.from_body(app, feature, r.body))

    # ---------------------------------------------------------------- dynos
    async def _dynos(self, r: Request) -> Answer:
        return 200, self.dynos.ps(r.query.get("app") or None)

    async def _run(self, r: Request, app: str) -> Answer:
        request = RunRequest.from_body(app, r.body)
        if request.attach:
            if r.upgrade != frames.PROTOCOL:
                raise DynodError(
                    "an attached one-off dyno needs the connection switched to its frames",
                    f"send `Connection: Upgrade` and `Upgrade: {frames.PROTOCOL}` (dynod run "
                    "does), or leave out attach",
                )
            dyno, ends = await self.dynos.run_attached(request, r.uid, r.gid)
            return attach.session(dyno, ends, self.dynos)
        dyno = await self.dynos.run(request, r.uid, r.gid)
        if dyno.detached:
            return 201, dyno.to_json() | self.dynos.timings(dyno)
        return streams.foreground(dyno, self.dynos)

    async def _stop(self, r: Request, app: str, dyno: str | None = None) -> Answer:
        grace = _seconds(r.query.get("grace"))
        if dyno is None:  # every dyno: the formation is scaled to 0, or it would restart them
            await self.formation.scale_to_zero(app)
        return 200, await self.dynos.stop(StopDynos(app, dyno, grace))

    async def _logs(self, r: Request) -> Answer:
        app, dyno_name = r.query.get("app"), r.query.get("dyno")
        if app:
            self.dynos.of_app(app)  # unknown app: a clear 404
        tail_given = _seconds(r.query.get("tail"))
        tail = 100 if tail_given is None else int(tail_given)
        follow = r.query.get("follow") in ("1", "true", "yes")
        return streams.log_lines(self.log, app, dyno_name, tail, follow)

    async def _inspect(self, r: Request) -> Answer:
        app, space = r.query.get("app") or None, r.query.get("space") or None
        return 200, await self.inspect.inspect(app, space)

    async def _explain_daemon(self, r: Request) -> Answer:
        return 200, self.startup.commands()

    async def _trace(self, r: Request) -> Answer:
        return await self.traces.stream(TraceRequest.from_body(r.body))


def _match(pattern: tuple[str, ...], path: list[str]) -> list[str] | None:
    """The `*` segments of `path` if it fits `pattern`, else None. `*` takes a non-empty one."""
    if len(pattern) != len(path):
        return None
    args: list[str] = []
    for want, got in zip(pattern, path, strict=True):
        if want == "*":
            if not got:
                return None
            args.append(got)
        elif want != got:
            return None
    return args


def _seconds(value: str | None) -> float | None:
    """A query's number of seconds (?grace=5) or count (?tail=100); None when not given."""
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        raise DynodError(f"not a number: {value!r}", "give seconds, e.g. ?grace=5") from None
    if not 0 <= number <= MAX_SECONDS:  # also refuses nan and infinity
        raise DynodError(
            f"not a usable number of seconds: {value!r}", f"give a number from 0 to {MAX_SECONDS}"
        )
    return number
