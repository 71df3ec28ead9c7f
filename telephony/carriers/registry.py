"""The carriers, by name. Adding a carrier: one module ending with its CarrierSpec, one
line in CARRIERS.

``CarrierRegistry`` is what the rest of the service asks: create_app builds one from the
app's Config (``CarrierRegistry.from_config``) and keeps it in ``app.extensions``;
``get_carriers()`` returns the current app's. It builds each carrier's adapters and
dialer once, from plain settings, so they never read the app's configuration.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

from flask import current_app

from .base import CarrierDialer, CarrierSettings, XmlCarrierAdapter
from .plivo import PLIVO
from .spec import CarrierSpec
from .telnyx import TELNYX
from .telnyx_call_control import TelnyxCallControl
from .twilio import TWILIO

if TYPE_CHECKING:  # pragma: no cover
    from flask.sansio.app import App

    from ..config import Config

# Every carrier the service speaks. The database stores these names (Carrier and
# CallSource columns, CHECK-constrained): a new one also needs its enum value and a
# migration (tests/test_carrier_registry.py checks they agree).
CARRIERS: tuple[CarrierSpec, ...] = (
    TWILIO,
    TELNYX,
    PLIVO,
)

EXTENSION = "telephony.carriers"  # app.extensions key


class CarrierRegistry:
    """Carrier descriptions and, built from one set of settings, their adapters and dialers."""

    def __init__(self, carriers: Iterable[CarrierSpec] = CARRIERS, settings: CarrierSettings | None = None) -> None:
        self.settings = settings or CarrierSettings()
        self._specs: dict[str, CarrierSpec] = {}
        self._by_medium: dict[str, CarrierSpec] = {}
        paths: set[str] = set()
        for spec in carriers:
            if spec.name in self._specs:
                raise ValueError(f"carrier {spec.name!r} is listed twice")
            if spec.medium_name in self._by_medium:
                raise ValueError(f"carriers {self._by_medium[spec.medium_name].name!r} and {spec.name!r} "
                                 f"share the Ultravox medium {spec.medium_name!r}")
            for path in spec.webhook_paths().values():
                if path in paths:
                    raise ValueError(f"webhook path {path} is used twice")
                paths.add(path)
            self._specs[spec.name] = spec
            self._by_medium[spec.medium_name] = spec
        self._adapters: dict[str, XmlCarrierAdapter] = {
            name: _named(spec.adapter.from_settings(self.settings), name) for name, spec in self._specs.items()}
        self._call_control: dict[str, TelnyxCallControl] = {
            name: _named(spec.call_control.from_settings(self.settings), name)
            for name, spec in self._specs.items() if spec.call_control is not None}
        self._dialers: dict[str, CarrierDialer] = {
            name: _named(spec.dialer.from_settings(self.settings), name) for name, spec in self._specs.items()}

    @classmethod
    def from_config(cls, config: "Config", carriers: Iterable[CarrierSpec] = CARRIERS) -> "CarrierRegistry":
        return cls(carriers, CarrierSettings.from_config(config))

    def with_carrier(self, spec: CarrierSpec) -> "CarrierRegistry":
        """A registry with one more carrier, built from the same settings."""
        return CarrierRegistry((*self, spec), self.settings)

    # -- descriptions -------------------------------------------------------------------

    def __iter__(self) -> Iterator[CarrierSpec]:
        return iter(self._specs.values())

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._specs)

    def by_name(self, name: str) -> CarrierSpec:
        """The carrier called ``name``; KeyError for an unknown one."""
        return self._specs[name]

    def by_medium(self, medium: str | Mapping[str, Any] | None) -> CarrierSpec | None:
        """The carrier of an Ultravox call medium (``{"twilio": {...}}`` or its key), or
        None for a medium that is not a carrier's (webRtc, serverWebSocket, sip...)."""
        if isinstance(medium, Mapping):
            medium = next(iter(medium), None)
        return self._by_medium.get(medium) if isinstance(medium, str) else None

    # -- built parts --------------------------------------------------------------------

    def xml_adapter(self, name: str) -> XmlCarrierAdapter:
        """The adapter of the carrier's XML webhooks; KeyError for an unknown carrier."""
        return self._adapters[name]

    def call_control(self, name: str) -> TelnyxCallControl:
        """The adapter of its JSON-event product (Telnyx Call Control); KeyError when it has none."""
        return self._call_control[name]

    def dialer(self, name: str) -> CarrierDialer | None:
        return self._dialers.get(name)


def _named(part: Any, name: str) -> Any:
    if part.name != name:
        raise ValueError(f"{type(part).__name__} is named {part.name!r}, but serves carrier {name!r}")
    return part


def get_carriers(app: "App | None" = None) -> CarrierRegistry:
    """The registry of ``app``, or of the current app (set up by create_app)."""
    if app is None:
        app = current_app
    try:
        return app.extensions[EXTENSION]
    except KeyError:
        raise RuntimeError("this app has no carrier registry (apps are built by telephony.create_app)") from None
