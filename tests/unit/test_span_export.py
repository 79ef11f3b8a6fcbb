"""The trace sender against collectors that misbehave at the byte level (a raw socket server
scripting its answers), and the trace context the upstream is sent.

Each collector here reads whole POSTs (head and Content-Length body) and answers as its script
says: a body that never ends, headers a byte at a time, no answer at all on a kept-alive
connection. The sender must bound every exchange by ``timeout_s``, hold no answer whole, and
never send a batch twice because a collector was slow.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config import OtlpConfig
from gateway.secret import Secret
from gateway.telemetry.otlp_wire import ExportHead
from gateway.telemetry.recorder import Span, Tracer
from gateway.telemetry.span_export import BatchSettings, OtlpTraceSender, SpanExport
from gateway.upstream.proxy import upstream_request_headers

Answer = Callable[[socket.socket, int], None]  # (connection, index of the POST on it)


class ScriptedCollector:
    """Accepts connections on 127.0.0.1 and answers each POST with ``answer``."""

    def __init__(self, answer: Answer) -> None:
        self._answer = answer
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.posts = 0
        self.connections = 0
        self._threads: list[threading.Thread] = []
        self._open: list[socket.socket] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            self._open.append(connection)
            thread = threading.Thread(target=self._serve, args=(connection,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, connection: socket.socket) -> None:
        reader = connection.makefile("rb")
        index = 0
        try:
            while True:
                length = 0
                line = reader.readline()
                if not line:
                    return
                while (line := reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                reader.read(length)
                self.posts += 1
                self._answer(connection, index)
                index += 1
        except OSError:
            return

    def close(self) -> None:
        self._listener.close()
        for connection in self._open:
            connection.close()


@contextmanager
def collector(answer: Answer) -> Iterator[ScriptedCollector]:
    scripted = ScriptedCollector(answer)
    try:
        yield scripted
    finally:
        scripted.close()


def a_batch() -> list[Span]:
    spans: list[Span] = []
    tracer = Tracer(1.0, spans.append, 64)
    tracer.start_server("s", None, {"a": "b"}).end()
    return spans


def sender_for(endpoint: str, timeout_s: float, **otlp: Any) -> OtlpTraceSender:
    config = OtlpConfig(endpoint=endpoint, timeout_s=timeout_s, compression="none", **otlp)
    return OtlpTraceSender(config, ExportHead({"service.name": "gw"}, "gateway", "1"))


def ok(connection: socket.socket, index: int) -> None:
    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")


def test_an_answer_is_not_read_beyond_a_bound_and_its_connection_not_reused() -> None:
    """A 200 whose body says 1 GiB and never ends counts as sent at once: the sender reads 64 KiB
    of any answer, and closes a connection it did not read to the end."""

    def endless(connection: socket.socket, index: int) -> None:
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n" + b"x" * 200_000)

    with collector(endless) as scripted:
        sender = sender_for(scripted.endpoint, timeout_s=5)
        started = time.monotonic()
        assert sender.send(a_batch())
        assert sender.send(a_batch())
        elapsed = time.monotonic() - started
        sender.close()
    assert elapsed < 2.5, elapsed
    assert (scripted.posts, scripted.connections) == (2, 2)


def test_a_collector_answering_a_byte_at_a_time_is_cut_off_at_the_timeout() -> None:
    """Each byte arrives well within a socket timeout; the exchange as a whole is bounded."""

    def trickle(connection: socket.socket, index: int) -> None:
        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"y" * 100:
            connection.sendall(bytes([byte]))
            time.sleep(0.1)

    with collector(trickle) as scripted, structlog.testing.capture_logs() as logs:
        sender = sender_for(scripted.endpoint, timeout_s=1.0)
        started = time.monotonic()
        assert not sender.send(a_batch())
        elapsed = time.monotonic() - started
        sender.close()
    assert 0.9 < elapsed < 2.0, elapsed
    assert [log["event"] for log in logs] == ["trace_export_failed"]


def test_a_kept_alive_connection_that_times_out_is_not_sent_the_batch_again() -> None:
    """The second POST on a kept-alive connection gets no answer: the batch is lost after
    ``timeout_s``, once, not re-sent on a new connection with a fresh timeout."""

    def answer_once(connection: socket.socket, index: int) -> None:
        if index == 0:
            ok(connection, index)

    with collector(answer_once) as scripted:
        sender = sender_for(scripted.endpoint, timeout_s=1.0)
        assert sender.send(a_batch())
        started = time.monotonic()
        assert not sender.send(a_batch())
        elapsed = time.monotonic() - started
        sender.close()
    assert elapsed < 1.6, elapsed
    assert scripted.posts == 2


def test_a_kept_alive_connection_the_collector_closed_is_retried_on_a_new_one() -> None:
    """A collector that closes idle connections: the next batch goes out on a new one, once."""

    def answer_and_close(connection: socket.socket, index: int) -> None:
        ok(connection, index)
        connection.shutdown(socket.SHUT_RDWR)

    with collector(answer_and_close) as scripted:
        sender = sender_for(scripted.endpoint, timeout_s=2.0)
        assert sender.send(a_batch())
        time.sleep(0.1)
        assert sender.send(a_batch())
        sender.close()
    assert (scripted.posts, scripted.connections) == (2, 2)


def test_headers_are_sent_once_each_and_warnings_never_name_the_endpoint_query() -> None:
    """An operator's User-Agent replaces the gateway's (one header, not two); Content-Type stays
    the gateway's; the path keeps the endpoint's query after /v1/traces, and a warning names
    the endpoint without it (a query may hold a key)."""
    heads: list[bytes] = []

    def refuse(connection: socket.socket, index: int) -> None:
        connection.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    class Recording(ScriptedCollector):
        def _serve(self, connection: socket.socket) -> None:
            heads.append(connection.recv(65536))
            refuse(connection, 0)

    scripted = Recording(refuse)
    try:
        sender = sender_for(
            f"{scripted.endpoint}/prefix?key=q-secret",
            timeout_s=2.0,
            headers=(("User-Agent", Secret("operator/1")), ("content-type", Secret("text/plain"))),
        )
        with structlog.testing.capture_logs() as logs:
            assert not sender.send(a_batch())
        sender.close()
    finally:
        scripted.close()
    head = heads[0].split(b"\r\n\r\n")[0].decode("latin-1").lower().splitlines()
    assert head[0] == "post /prefix/v1/traces?key=q-secret http/1.1"
    assert [line for line in head if line.startswith("user-agent:")] == ["user-agent: operator/1"]
    content_types = [line for line in head if line.startswith("content-type:")]
    assert content_types == ["content-type: application/x-protobuf"]
    assert logs[0]["endpoint"] == f"{scripted.endpoint}/prefix/v1/traces"
    assert "q-secret" not in repr(logs)


def test_shutdown_is_bounded_says_what_it_lost_and_takes_no_more_spans() -> None:
    """A collector that never answers: shutdown ends within the timeouts, warns with the number
    of spans it could not send, and a span ended afterwards is not queued."""
    with collector(lambda connection, index: None) as scripted:
        sender = sender_for(scripted.endpoint, timeout_s=0.3)
        export = SpanExport(sender.send, BatchSettings(60_000, 64, 2, 500))
        tracer = Tracer(1.0, export.add, 64)
        for _ in range(6):
            tracer.start_server("s", None, {}).end()
        with structlog.testing.capture_logs() as logs:
            started = time.monotonic()
            sender.stop()
            export.shutdown()
            elapsed = time.monotonic() - started
        tracer.start_server("late", None, {}).end()
        sender.close()
    assert elapsed < 3.0, elapsed
    dropped = [log for log in logs if log["event"] == "trace_spans_dropped"]
    assert len(dropped) == 1 and 1 <= dropped[0]["spans"] <= 6 and dropped[0]["at_shutdown"]
    assert export.flush(0.1)  # nothing queued: the late span was not taken


def test_a_traced_gateway_replaces_the_clients_trace_context_whole() -> None:
    """With the gateway's traceparent, the client's traceparent and tracestate (one it rejected,
    or that of a traceparent it rejected) are not forwarded; untraced, both pass as they came."""
    incoming = CIMultiDictProxy(
        CIMultiDict(
            [
                ("traceparent", "00-not-valid"),
                ("tracestate", "vendor=secretish"),
                ("Accept", "application/json, text/event-stream"),
            ]
        )
    )
    own = {"traceparent": f"00-{'1' * 32}-{'2' * 16}-01"}
    traced = upstream_request_headers(incoming, own)
    assert traced.getall("traceparent") == [own["traceparent"]]
    assert "tracestate" not in traced
    assert traced["Accept"] == "application/json, text/event-stream"
    untraced = upstream_request_headers(incoming, {})
    assert untraced.getall("traceparent") == ["00-not-valid"]
    assert untraced.getall("tracestate") == ["vendor=secretish"]


def test_an_http_endpoint_goes_through_the_environments_proxy_unless_no_proxy_names_it() -> None:
    """HTTP_PROXY (with credentials): the proxy is asked for the collector's absolute URL, with
    Proxy-Authorization; NO_PROXY naming the collector's host sends it directly."""
    heads: list[bytes] = []

    class Proxy(ScriptedCollector):
        def _serve(self, connection: socket.socket) -> None:
            heads.append(connection.recv(65536))
            ok(connection, 0)

    proxy = Proxy(ok)
    try:
        environ = {"HTTP_PROXY": f"http://user:p%40ss@127.0.0.1:{proxy.port}"}
        config = OtlpConfig(endpoint="http://collector.invalid:4318", timeout_s=2.0, compression="none")
        head = ExportHead({"service.name": "gw"}, "gateway", "1")
        sender = OtlpTraceSender(config, head, environ=environ)
        assert sender.send(a_batch())
        sender.close()
        bypassing = OtlpTraceSender(config, head, environ={**environ, "no_proxy": ".invalid"})
        assert not bypassing.send(a_batch())  # directly: collector.invalid does not resolve
        bypassing.close()
    finally:
        proxy.close()
    assert len(heads) == 1
    lines = heads[0].decode("latin-1").split("\r\n")
    assert lines[0] == "POST http://collector.invalid:4318/v1/traces HTTP/1.1"
    assert "Host: collector.invalid:4318" in lines
    assert "Proxy-Authorization: Basic dXNlcjpwQHNz" in lines  # user:p@ss


def test_an_https_endpoint_is_reached_through_a_connect_tunnel() -> None:
    """HTTPS_PROXY: the sender asks the proxy to CONNECT to the collector's host and port (the
    credentials go on the CONNECT, not on the tunnelled request); a refused tunnel is a lost
    batch, not a direct connection."""
    heads: list[bytes] = []

    class Proxy(ScriptedCollector):
        def _serve(self, connection: socket.socket) -> None:
            heads.append(connection.recv(65536))
            connection.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")

    proxy = Proxy(ok)
    try:
        environ = {"https_proxy": f"http://u:p@127.0.0.1:{proxy.port}"}
        config = OtlpConfig(endpoint="https://collector.invalid", timeout_s=2.0)
        sender = OtlpTraceSender(config, ExportHead({}, "gateway", "1"), environ=environ)
        with structlog.testing.capture_logs() as logs:
            assert not sender.send(a_batch())
        sender.close()
    finally:
        proxy.close()
    lines = heads[0].decode("latin-1").split("\r\n")
    assert lines[0] == "CONNECT collector.invalid:443 HTTP/1.0"
    assert "Proxy-Authorization: Basic dTpw" in lines
    assert [log["event"] for log in logs] == ["trace_export_failed"]


def test_the_otlp_certificate_settings_verify_the_collector_and_a_bad_one_stops_exports(
    tmp_path: Path,
) -> None:
    """OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE: a collector whose certificate that CA signed is
    verified (and one it did not sign is refused); a CA file that does not load is an error at
    start-up naming the variable, and no export goes out."""
    from tests.support.tls_certs import TestAuthority

    authority = TestAuthority(tmp_path)
    server_pair = authority.issue("collector")
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(server_pair.cert, server_pair.key)

    def tls_ok(connection: socket.socket, index: int) -> None:
        ok(connection, index)

    class TlsCollector(ScriptedCollector):
        def _serve(self, connection: socket.socket) -> None:
            try:
                wrapped = served.wrap_socket(connection, server_side=True)
            except (OSError, ssl.SSLError):
                return
            self._open.append(wrapped)  # the plain socket was detached into it
            super()._serve(wrapped)

    scripted = TlsCollector(tls_ok)
    try:
        endpoint = f"https://127.0.0.1:{scripted.port}"
        config = OtlpConfig(endpoint=endpoint, timeout_s=2.0)
        head = ExportHead({}, "gateway", "1")
        trusting = OtlpTraceSender(
            config, head, environ={"OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE": str(authority.ca)}
        )
        assert trusting.send(a_batch())
        trusting.close()
        (tmp_path / "other").mkdir()
        other = TestAuthority(tmp_path / "other", name="Other CA")
        distrusting = OtlpTraceSender(config, head, environ={"OTEL_EXPORTER_OTLP_CERTIFICATE": str(other.ca)})
        assert not distrusting.send(a_batch())
        distrusting.close()
        with structlog.testing.capture_logs() as logs:
            missing = tmp_path / "missing.pem"
            broken = OtlpTraceSender(config, head, environ={"OTEL_EXPORTER_OTLP_CERTIFICATE": str(missing)})
            assert not broken.send(a_batch())
            broken.close()
    finally:
        scripted.close()
    assert scripted.posts == 1
    unusable = [log for log in logs if log["event"] == "otlp_tls_setting_unusable"]
    assert unusable and unusable[0]["variable"] == "OTEL_EXPORTER_OTLP_CERTIFICATE"
