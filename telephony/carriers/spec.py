"""A carrier, described once: the facts the rest of the service derives from.

Each carrier module (``twilio.py``, ``telnyx.py``, ``plivo.py``) ends with its
``CarrierSpec``; ``registry.py`` lists them. The credential store's provider fields, the
management API's carrier names and credential models, the webhook routes, the Ultravox
medium -> call source map and the REST base URL lookups are all read from these
descriptions, so a carrier's name, fields and paths are written in one place.

A description holds classes, not instances: the registry of an app builds the adapters
and the dialer from plain ``CarrierSettings`` (read from the app's Config once, in
create_app), so no adapter ever reads the Flask app's configuration.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import CarrierAdapter, CarrierDialer, XmlCarrierAdapter
from .numbers import NumberProvisioner


@dataclass(frozen=True)
class CredentialField:
    """One credential an agency stores for a carrier (all are stored encrypted and are
    write-only through the API, whatever ``secret`` says)."""

    name: str
    required: bool = True  # an outbound dial needs it (checked before anything is dialled)
    secret: bool = True  # False: an identifier (account id, public key), not a secret


@dataclass(frozen=True)
class CarrierSpec:
    """One carrier. ``name`` is its value everywhere: the Carrier / CallSource column
    value, the credential provider, the path segment of its webhooks
    (``/webhooks/<name>/...``) and, by default, the key of its Ultravox call medium."""

    name: str
    title: str  # for people: "Twilio"
    credentials: tuple[CredentialField, ...]
    api_base_setting: str  # the Config attribute holding its REST API base URL
    adapter: type[XmlCarrierAdapter]  # voice webhooks answered with XML, status callbacks
    dialer: type[CarrierDialer]  # outbound calls through its REST API
    inbound_path: str  # POST /webhooks/<name>/<inbound_path>: "a call comes in"
    status_path: str  # POST /webhooks/<name>/<status_path>: status callbacks of inbound calls
    # A JSON-event product answered through the REST API, if any: POST
    # /webhooks/<name>/<call_control_path>. Only Telnyx has one (Call Control, whose
    # interface services/inbound.py drives); another carrier's would generalise it.
    call_control: type[CarrierAdapter] | None = None
    call_control_path: str = "call-control"
    medium_name: str = ""  # the Ultravox medium's key; "" means `name`
    # Its phone-number operations (ownership check, pointing webhooks here); None: numbers
    # of this carrier can only be registered with the carrier set up by hand.
    numbers: type[NumberProvisioner] | None = None

    def __post_init__(self) -> None:
        if not self.medium_name:
            object.__setattr__(self, "medium_name", self.name)
        names = [field.name for field in self.credentials]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: credential fields repeat: {names}")

    @property
    def medium(self) -> dict[str, Any]:
        """The Ultravox call medium of its calls (a new dict each time: callers may add to it)."""
        return {self.medium_name: {}}

    @property
    def credential_names(self) -> tuple[str, ...]:
        """Every field an agency can store, in display order."""
        return tuple(field.name for field in self.credentials)

    @property
    def required_credentials(self) -> tuple[str, ...]:
        """The fields an outbound dial needs."""
        return tuple(field.name for field in self.credentials if field.required)

    @property
    def secret_credentials(self) -> tuple[str, ...]:
        return tuple(field.name for field in self.credentials if field.secret)

    def api_base(self, config: Any) -> str:
        """Its REST API base URL in ``config`` (a Config, or anything with the attribute)."""
        return getattr(config, self.api_base_setting)

    def webhook_paths(self) -> dict[str, str]:
        """kind ("inbound", "status", "call-control") -> path under /webhooks."""
        paths = {"inbound": f"/{self.name}/{self.inbound_path}", "status": f"/{self.name}/{self.status_path}"}
        if self.call_control is not None:
            paths["call-control"] = f"/{self.name}/{self.call_control_path}"
        return paths
