"""gate.py
=======

Connections that have not associated yet. A PACS sends its A-ASSOCIATE-RQ as soon as its TCP
connection is up; a connection that does not is *pending*, and must deliver it within
``network.request_timeout_s`` (enforced in :mod:`sonoshot.dicom_io.upper_layer`). Pending
connections are capped per peer address (``network.max_pending_per_address``) and in total
(``network.max_pending``): one more from an address at its cap is closed at once, before any
thread is started for it. At the total cap, a newcomer from an address holding at least two
fewer pending connections than the busiest address takes the place of that address's oldest one,
or else of the oldest pending connection if it has waited :data:`EVICT_AFTER_S`; otherwise it is
closed. So idle connections, from one address or many, cannot keep out a sender that connects and
associates at once. ``network.max_associations`` counts associations only.

:class:`GuardedServer` is pynetdicom's threaded association server, changed through public
extension points (socketserver's ``get_request`` and ``verify_request``, pynetdicom's
``make_server(server_class=..., request_handler=...)``): accepted sockets get ``TCP_NODELAY`` and
a timeout; a TLS handshake runs in the connection's own thread within the request timeout
rather than in the accept loop (where one silent peer would stall every other); and
:class:`ConnectionGate` admits or closes each new connection. :class:`GatedAE` leaves pending
connections (and ended ones) out of the association count pynetdicom checks against
``maximum_associations``. :class:`SharedContexts` spares each new connection pynetdicom's deep
copy of the supported presentation contexts, and :class:`NumericAddress` its two address
look-ups: together about 100 ms of CPU per connection here, which any peer could make us spend.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from weakref import WeakSet

from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.transport import AddressInformation, RequestHandler, ThreadedAssociationServer

from sonoshot.logs import RateLimitedLog

log = logging.getLogger(__name__)
#: A pending connection older than its request timeout plus this is closed by the gate itself.
OVERDUE_GRACE_S = 5.0
#: At the total cap, a pending connection this old may be closed to admit a newcomer (a PACS sends
#: its request within milliseconds of connecting).
EVICT_AFTER_S = 1.0


@dataclass
class _Ticket:
    address: str
    sock: socket.socket
    opened: float
    assoc: Association | None = None


class ConnectionGate:
    """Admits new connections while pending ones stay under the caps; tracks each until it has
    sent its A-ASSOCIATE-RQ or closed.

    Parameters
    ----------
    max_per_address, max_total
        Pending connections allowed from one peer address, and from all.
    request_timeout_s
        How long a connection may stay pending.
    count_refusal
        Called with the reason (``pending-per-address``, ``pending-total``, ``pending-evicted``) of
        each connection closed.

    Raises
    ------
    ValueError
        If a cap is below 1, the total below the per-address cap, or the timeout not positive.
    """

    def __init__(self, max_per_address: int, max_total: int, request_timeout_s: float,
                 count_refusal: Callable[[str], None] = lambda _reason: None) -> None:
        if max_per_address < 1 or max_total < max_per_address:
            raise ValueError(f'Arguments "max_per_address" ({max_per_address}) and "max_total" ({max_total}) must '
                             f'satisfy 1 <= max_per_address <= max_total.')
        if not request_timeout_s > 0:
            raise ValueError(f'Argument "request_timeout_s" must be > 0; got {request_timeout_s!r}.')
        self.max_per_address, self.max_total = max_per_address, max_total
        self.request_timeout_s = request_timeout_s
        self.count_refusal = count_refusal
        self.warn = RateLimitedLog(log)
        self._lock = threading.Lock()
        self._by_socket: dict[socket.socket, _Ticket] = {}
        self._by_assoc: dict[Association, _Ticket] = {}
        self._associations: WeakSet[Association] = WeakSet()

    def _prune(self, now: float) -> None:
        for ticket in list(self._by_socket.values()):
            assoc = ticket.assoc
            ended = ticket.sock.fileno() < 0 or (
                assoc is not None and ((assoc.ident is not None and not assoc.is_alive())
                                       or assoc.dul.socket is None or assoc.dul.socket.socket is None))
            overdue = now - ticket.opened > self.request_timeout_s + OVERDUE_GRACE_S
            if overdue and not ended:
                log.warning("connection from %s still pending %.0f s after it opened: closed", ticket.address,
                            now - ticket.opened)
                with contextlib.suppress(OSError):
                    ticket.sock.shutdown(socket.SHUT_RDWR)
            if ended or overdue:
                self._forget(ticket)

    def _forget(self, ticket: _Ticket) -> None:
        self._by_socket.pop(ticket.sock, None)
        if ticket.assoc is not None:
            self._by_assoc.pop(ticket.assoc, None)

    def admit(self, sock: socket.socket, address: str) -> bool:
        """Whether a new connection from ``address`` may stay open (it is then pending)."""
        now = time.monotonic()
        evicted: _Ticket | None = None
        with self._lock:
            self._prune(now)
            counts: dict[str, int] = {}
            for ticket in self._by_socket.values():
                counts[ticket.address] = counts.get(ticket.address, 0) + 1
            from_address = counts.get(address, 0)
            if from_address >= self.max_per_address:
                reason, cap = "pending-per-address", f"{from_address} pending from it (network.max_pending_per_address)"
            elif len(self._by_socket) >= self.max_total:
                evicted = self._evictable(counts, from_address, now)
                reason, cap = "pending-total", f"{len(self._by_socket)} pending in all (network.max_pending)"
                if evicted is not None:
                    self._forget(evicted)
                    self._by_socket[sock] = _Ticket(address, sock, now)
            else:
                self._by_socket[sock] = _Ticket(address, sock, now)
                return True
        if evicted is None:
            self.count_refusal(reason)
            self.warn.warning(reason, "connection from %s closed: %s have not sent an A-ASSOCIATE-RQ yet", address, cap)
            return False
        with contextlib.suppress(OSError):
            evicted.sock.shutdown(socket.SHUT_RDWR)
        self.count_refusal("pending-evicted")
        self.warn.warning("pending-evicted", "connection from %s pending for %.1f s closed for one from %s: %s",
                          evicted.address, now - evicted.opened, address, cap)
        return True

    def _evictable(self, counts: dict[str, int], from_address: int, now: float) -> _Ticket | None:
        """At the total cap: the pending connection a newcomer holding ``from_address`` may replace."""
        busiest = max(counts, key=counts.__getitem__)
        if counts[busiest] > from_address + 1:
            return min((t for t in self._by_socket.values() if t.address == busiest), key=lambda t: t.opened)
        oldest = min(self._by_socket.values(), key=lambda t: t.opened)
        return oldest if now - oldest.opened >= EVICT_AFTER_S else None

    def attach(self, assoc: Association) -> float:
        """Bind a new association to its connection's ticket; returns the monotonic time by which
        its A-ASSOCIATE-RQ must have arrived."""
        sock = assoc.dul.socket.socket if assoc.dul.socket is not None else None
        with self._lock:
            ticket = self._by_socket.get(sock) if sock is not None else None
            if ticket is None:  # not admitted through admit() (a test server, say): pending from now
                ticket = _Ticket(str(assoc.requestor.address), sock, time.monotonic())
                if sock is not None:
                    self._by_socket[sock] = ticket
            ticket.assoc = assoc
            self._by_assoc[assoc] = ticket
            return ticket.opened + self.request_timeout_s

    def requested(self, assoc: Association) -> None:
        """The connection's A-ASSOCIATE-RQ arrived: no longer pending, and from now on an association."""
        with self._lock:
            ticket = self._by_assoc.get(assoc)
            if ticket is not None:
                self._forget(ticket)
            self._associations.add(assoc)

    def closed(self, assoc: Association) -> bool:
        """The connection closed; returns whether it was still pending (not closed by the gate)."""
        with self._lock:
            ticket = self._by_assoc.get(assoc)
            if ticket is not None:
                self._forget(ticket)
            return ticket is not None

    def is_association(self, assoc: Association) -> bool:
        """Whether ``assoc`` sent its A-ASSOCIATE-RQ (it counts against ``max_associations``)."""
        return assoc in self._associations

    def pending(self) -> int:
        """Connections pending now."""
        with self._lock:
            self._prune(time.monotonic())
            return len(self._by_socket)


class SharedContexts(list):
    """The supported presentation contexts, shared by every connection.

    pynetdicom deep-copies the server's supported contexts for each connection it accepts; for
    sonoshot's 171 storage and verification contexts with their 7,654 transfer syntaxes that is
    about 100 ms of CPU per connection, which any peer could make us spend by connecting.
    Negotiation only reads the supported contexts, so the copy returns the same list.
    """

    def __deepcopy__(self, memo: dict[int, object]) -> SharedContexts:
        return self


class GatedAE(AE):
    """An AE whose association count (checked against ``maximum_associations`` when an
    A-ASSOCIATE-RQ is negotiated) holds only connections that sent one (``gate`` knows which) and
    are still connected and neither released nor aborted: not pending connections, nor ended ones
    whose threads are still winding down (writing their audit rows, say)."""

    gate: ConnectionGate | None = None

    @property
    def active_associations(self) -> list[Association]:
        gate = self.gate
        return [a for a in super().active_associations
                if not (a.is_released or a.is_aborted) and _connected(a) and (gate is None or gate.is_association(a))]


def _connected(assoc: Association) -> bool:
    """Whether the association's TCP connection is still open."""
    wrapper = assoc.dul.socket
    return wrapper is not None and wrapper.socket is not None and wrapper.socket.fileno() >= 0


class NumericAddress(AddressInformation):
    """An address that is already numeric (from ``accept`` or ``getsockname``): pynetdicom's
    resolves every address it is given with ``getaddrinfo``, twice per accepted connection."""

    @property
    def address(self) -> str:
        return self._numeric

    @address.setter
    def address(self, value: str) -> None:
        self._numeric = value


class GuardedRequestHandler(RequestHandler):
    """pynetdicom's request handler, with the TLS handshake done first, within the socket's
    timeout, and the peer's and our addresses taken as they are."""

    server: GuardedServer

    @property
    def local(self) -> AddressInformation:
        return NumericAddress(*self.server.server_address[:2])

    @property
    def remote(self) -> AddressInformation:
        return NumericAddress(*self.client_address[:2])

    def handle(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            try:
                self.request.do_handshake()
            except (OSError, ValueError) as exc:
                self.server.gate.count_refusal("tls-handshake")
                self.server.gate.warn.warning("tls-handshake", "TLS handshake with %s failed: %s",
                                              self.client_address[0], exc)
                self.server.shutdown_request(self.request)
                return
        super().handle()


class GuardedServer(ThreadedAssociationServer):
    """pynetdicom's threaded server admitting connections through ``gate`` (see the module notes)."""

    request_queue_size = 128  # socketserver's default backlog of 5 drops SYNs under a connection burst

    def __init__(self, *args, gate: ConnectionGate, **kwargs) -> None:
        self.gate = gate
        super().__init__(*args, request_handler=GuardedRequestHandler, **kwargs)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client, address = self.socket.accept()
        try:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client.settimeout(self.gate.request_timeout_s)
            if self.ssl_context:
                client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        except OSError:
            client.close()
            raise
        return client, address

    def verify_request(self, request: socket.socket, client_address: tuple[str, int]) -> bool:
        return self.gate.admit(request, client_address[0])

    def service_actions(self) -> None:
        """Nothing: pynetdicom forces ``gc.collect()`` here every 60 connections, which stops the
        whole process for as long as a full collection takes (0.4 s here with torch loaded), so a
        peer opening connections could stall every association. Python's own collector frees the
        ended associations' reference cycles."""

    def shutdown(self) -> None:
        """Stop serving and close the listening socket (this server is not in ``AE._servers``)."""
        socketserver.BaseServer.shutdown(self)
        self.server_close()
