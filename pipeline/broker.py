"""A single-node Apache Kafka broker (KRaft, combined broker + controller) for development and
tests, fetched from Maven Central by the project itself.

    python -m pipeline.broker fetch | up | down | status      (make kafka-up / kafka-down)

`fetch` runs Maven on `deploy/kafka/pom.xml` to copy the broker jars into
`.cache/kafka/<version>/libs`; `up` formats KRaft storage once (StorageTool random-uuid, then
format with the static quorum voter in server.properties), starts `kafka.Kafka` on 127.0.0.1
and waits until it answers a metadata request; `down` stops it with SIGTERM (a clean controlled
shutdown), SIGKILL after a grace period. Data, config, logs and the pid live in
`.cache/kafka/run/`. Only Java 17+ and Maven are needed, both from the machine's packages.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POM = ROOT / "deploy" / "kafka" / "pom.xml"
KAFKA_VERSION = "4.0.2"  # must match kafka.version in deploy/kafka/pom.xml
DEFAULT_PORT = int(os.environ.get("FIELDTRACK_KAFKA_PORT", "19092"))
START_TIMEOUT_S = 90.0

LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = info
"""


class BrokerError(RuntimeError):
    """The broker could not be fetched or started; the message says what failed and where."""


def java_available() -> str | None:
    """Why the broker cannot run here, or None when Java and Maven are present."""
    missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
    return f"{' and '.join(missing)} not found on PATH" if missing else None


@dataclass
class LocalKafka:
    port: int = DEFAULT_PORT
    controller_port: int = 0  # 0: port + 1
    cache: Path = ROOT / ".cache" / "kafka"
    partitions: int = 8

    def __post_init__(self) -> None:
        self.controller_port = self.controller_port or self.port + 1
        self.libs = self.cache / KAFKA_VERSION / "libs"
        self.run_dir = self.cache / f"run-{self.port}"
        self.pid_file = self.run_dir / "broker.pid"
        self.log_file = self.run_dir / "broker.log"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- jars -----------------------------------------------------------------------------

    def fetch(self) -> Path:
        if self.libs.exists() and any(self.libs.glob("kafka_2.13-*.jar")):
            return self.libs
        why = java_available()
        if why:
            raise BrokerError(f"cannot fetch the Kafka broker: {why}")
        print(f"fetching Apache Kafka {KAFKA_VERSION} jars from Maven Central ...", flush=True)
        tmp = self.libs.with_name("libs.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        result = subprocess.run(
            ["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
             f"-DoutputDirectory={tmp}", "-DincludeScope=runtime"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise BrokerError(f"maven failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
        tmp.rename(self.libs)  # complete or absent: an interrupted fetch is retried whole
        return self.libs

    # -- configuration and storage --------------------------------------------------------

    def _java(self, main: str, *args: str) -> list[str]:
        return [
            "java", "-Xms256m", "-Xmx768m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.run_dir / 'log4j2.properties'}",
            "-cp", f"{self.libs}/*", main, *args,
        ]  # fmt: skip

    def configure(self) -> Path:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        props = self.run_dir / "server.properties"
        props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port},"
                    f"CONTROLLER://127.0.0.1:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    f"log.dirs={self.run_dir / 'data'}",
                    f"num.partitions={self.partitions}",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=8",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "auto.create.topics.enable=true",
                    "log.retention.hours=48",
                    # A restart re-registers the node only once the old registration's session
                    # expired (DUPLICATE_BROKER_REGISTRATION until then): 4 s, not the default
                    # 9 s, for a broker whose controller lives in the same JVM.
                    "broker.session.timeout.ms=4000",
                    "broker.heartbeat.interval.ms=1000",
                    "log.segment.bytes=67108864",
                ]
            )
            + "\n"
        )
        (self.run_dir / "log4j2.properties").write_text(LOG4J2.format(log=self.log_file))
        return props

    def format_storage(self, props: Path) -> None:
        if (self.run_dir / "data" / "meta.properties").exists():
            return
        cluster_id = subprocess.run(
            self._java("kafka.tools.StorageTool", "random-uuid"),
            capture_output=True, text=True, check=True,
        ).stdout.strip().splitlines()[-1]  # fmt: skip
        result = subprocess.run(
            self._java("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)),
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise BrokerError(f"formatting KRaft storage failed:\n{result.stdout}{result.stderr}")

    # -- lifecycle ------------------------------------------------------------------------

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def answering(self, timeout_s: float = 1.0) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=timeout_s):
                pass
        except OSError:
            return False
        return asyncio.run(_metadata_ok(self.bootstrap))

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        if self.answering():  # ours, or one another checkout started on this port
            return
        self.wait_ready(self.launch(), timeout_s)

    def launch(self) -> subprocess.Popen[bytes]:
        """Fetches, configures and formats, then starts the broker process without waiting
        for it to answer (the JVM takes ~20 s: a caller may do other work meanwhile)."""
        self.fetch()
        props = self.configure()
        self.format_storage(props)
        # Partitions of deleted topics (every test and benchmark deployment deletes its own)
        # that the broker had not purged yet: gone from the metadata, but loaded at start,
        # where thousands of them made a start take 30 s instead of 5.
        for deleted in (self.run_dir / "data").glob("*-delete"):
            shutil.rmtree(deleted, ignore_errors=True)
        out = (self.run_dir / "broker.out").open("ab")
        proc = subprocess.Popen(
            self._java("kafka.Kafka", str(props)),
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.pid_file.write_text(str(proc.pid))
        return proc

    def wait_ready(self, proc: subprocess.Popen[bytes], timeout_s: float = START_TIMEOUT_S) -> None:
        """Waits until the launched broker answers; stops it and raises if it does not."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = (self.run_dir / "broker.out").read_text(errors="replace")[-3000:]
                raise BrokerError(f"the broker exited with {proc.returncode}:\n{tail}")
            if self.answering():
                return
            time.sleep(0.5)
        self.stop()
        raise BrokerError(f"the broker did not answer on {self.bootstrap} in {timeout_s:.0f} s")

    def stop(self, grace_s: float = 30.0) -> None:
        pid = self.pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if _exited(pid):
                break
            time.sleep(0.2)
        else:
            os.kill(pid, signal.SIGKILL)
            _exited(pid)
        self.pid_file.unlink(missing_ok=True)


def _exited(pid: int) -> bool:
    """Has the process ended? A broker this process started stays a zombie (and answers
    `kill 0`) until reaped: stopping it used to wait out the whole grace period."""
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return True
    except ChildProcessError:
        pass  # not our child (`make kafka-up` or another checkout started it)
    try:
        os.kill(pid, 0)
    except OSError:
        return True
    return False


async def _metadata_ok(bootstrap: str) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        await admin.start()
        await admin.list_topics()
        return True
    except Exception:
        return False
    finally:
        await admin.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.broker", description=__doc__)
    parser.add_argument("action", choices=("fetch", "up", "down", "status"))
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args(argv)
    broker = LocalKafka(port=args.port)
    try:
        if args.action == "fetch":
            print(broker.fetch())
        elif args.action == "up":
            broker.start()
            print(f"Kafka {KAFKA_VERSION} answering on {broker.bootstrap} (logs: {broker.run_dir})")
        elif args.action == "down":
            broker.stop()
            print("Kafka stopped")
        else:
            up = broker.answering()
            print(f"Kafka on {broker.bootstrap}: {'up' if up else 'down'}")
            return 0 if up else 1
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
