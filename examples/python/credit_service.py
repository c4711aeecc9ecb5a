#!/usr/bin/python3
"""credit_service.py -- a ferry consumer in Python, on the SQL consumer protocol.

    credit_service.py --db CONNINFO --kafka BOOTSTRAP --name CONSUMER
                      --topic IN [--emit-topic OUT] [--max-attempts N]

It keeps account balances in its own database,

    account (id text PRIMARY KEY, balance bigint NOT NULL)

and applies "Credited" messages keyed by account id, payload
{"account": "<id>", "amount": N} with N a positive integer. With
--emit-topic it passes each credit on: in the same transaction as the
credit it emits a "Credited" message for the same account through the
outbox (ferry.emit_message), so the next service gets it exactly when this
one applied it.

Exactly once in effect, in per-key order, through the protocol of schema 12
(README, "From any language"): for each Kafka message

    BEGIN
    SELECT verdict, drain FROM ferry.consume_claim(...)
    -- verdict 'apply': the handler (UPDATE account, emit)
    SELECT ferry.consume_finish(...)
    COMMIT
    then, and only then, store the Kafka offset after the message

A failed handler rolls back and calls ferry.consume_fail in a transaction of
its own: 'retry' (the database counts attempts, so the bound holds across a
restart) or 'dead_lettered'. Lost connections, serialization failures and
deadlocks are retried without counting, a bounded number of times.

Debian packages: python3-psycopg2, python3-confluent-kafka. SIGTERM or
SIGINT: finish the message in hand, commit offsets, print one line

    stats applied=N duplicates=N late=N held=N dead_lettered=N drained=N

and exit 0. Bad flags exit 2; a database or broker it cannot use exits 1.
"""

import argparse
import json
import re
import signal
import sys
import time
import uuid

import psycopg2
import psycopg2.extensions
from confluent_kafka import Consumer, KafkaError

TRANSIENT_TRIES = 100          # lost connection, serialization failure, deadlock
HELD_SCAN_SECONDS = 1.0        # look at every held key this often
POSITION = re.compile(r"[1-9][0-9]{0,18}")
POSITION_MAX = 2**63 - 2

stop = False


def on_signal(signum, frame):
    global stop
    stop = True


class Poison(Exception):
    """The message itself is bad: dead-lettered at once, never retried."""


def log(event, **fields):
    fields["event"] = event
    print(json.dumps(fields), file=sys.stderr, flush=True)


class Message:
    """What the protocol needs of a message, from Kafka or from the held rows."""

    def __init__(self, id, topic, key, seq, payload, headers, type_, aggtype,
                 partition=-1, offset=-1, poison=None):
        self.id, self.topic, self.key, self.seq = id, topic, key, seq
        self.payload, self.headers, self.type, self.aggtype = payload, headers, type_, aggtype
        self.partition, self.offset, self.poison = partition, offset, poison

    @classmethod
    def from_kafka(cls, km):
        """Everything read from Kafka is hostile: a header that is not what a
        relay writes makes the message poison, never a crash."""
        headers, poison = {}, None
        for name, value in km.headers() or []:
            if value is None:
                continue
            try:
                text = value.decode("utf-8")
            except UnicodeDecodeError:
                continue            # PostgreSQL text cannot hold it: left out
            if "\x00" not in text:
                headers[name] = text
        try:
            key = (km.key() or b"").decode("utf-8")
            if "\x00" in key or len(key.encode()) > 1024:
                raise ValueError
        except (UnicodeDecodeError, ValueError):
            key, poison = (km.key() or b"").hex(), "the message key is not UTF-8 text"
        try:
            payload = (km.value() if km.value() is not None else b"null").decode("utf-8")
            if "\x00" in payload:
                raise ValueError
        except (UnicodeDecodeError, ValueError):
            payload, poison = json.dumps(km.value().hex()), "payload is not UTF-8 text"
        raw_id = headers.get("ferry_id") or headers.get("ce_id")
        try:
            mid = str(uuid.UUID(raw_id)) if raw_id else None
        except ValueError:
            mid = None
        if mid is None:
            # The same coordinates always give the same id: a redelivery of
            # that offset is still recognised.
            mid = str(uuid.uuid5(uuid.NAMESPACE_URL,
                                 "kafka:%s/%d/%d" % (km.topic(), km.partition(), km.offset())))
        seq = None
        if "ferry_seq" in headers:
            s = headers["ferry_seq"]
            if POSITION.fullmatch(s) and int(s) <= POSITION_MAX:
                seq = int(s)
            else:
                poison = "header ferry_seq is %r, not a position" % s[:40]
        return cls(mid, km.topic(), key, seq, payload, headers,
                   headers.get("ferry_type") or headers.get("ce_type") or "",
                   headers.get("ferry_aggregate_type", ""),
                   km.partition(), km.offset(), poison)

    @classmethod
    def from_held(cls, row):
        (mid, topic, key, seq, payload, headers, type_, aggtype) = row
        return cls(str(mid), topic, key, seq, payload, headers, type_, aggtype)


class Service:
    def __init__(self, args):
        self.args = args
        self.db = psycopg2.connect(args.db, application_name="credit-service-py")
        self.stats = dict(applied=0, duplicates=0, late=0, held=0, dead_lettered=0, drained=0)
        with self.db, self.db.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS account "
                        "(id text PRIMARY KEY, balance bigint NOT NULL)")
            cur.execute("SELECT ferry.consume_protocol()")
            if cur.fetchone()[0] != 1:
                raise SystemExit("credit-service: this ferry speaks another consumer protocol")

    # ---------------------------------------------------------------- handler

    def credit(self, cur, m):
        """The service's own effect, in the message's transaction."""
        if m.type != "Credited":
            raise Poison("unknown event type %r" % m.type[:64])
        try:
            body = json.loads(m.payload)
        except ValueError as e:
            raise Poison("payload is not valid JSON: %s" % e)
        amount = body.get("amount") if isinstance(body, dict) else None
        if (not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0
                or amount > 10**12 or body.get("account") != m.key):
            raise Poison("payload is not {\"account\": <the key>, \"amount\": N > 0}")
        cur.execute("INSERT INTO account (id, balance) VALUES (%s, %s) "
                    "ON CONFLICT (id) DO UPDATE SET balance = account.balance + EXCLUDED.balance",
                    (m.key, amount))
        if self.args.emit_topic:
            cur.execute("SELECT ferry.emit_message(topic => %s, key => %s, type => 'Credited', "
                        "payload => %s, aggregatetype => 'account')",
                        (self.args.emit_topic, m.key,
                         json.dumps({"account": m.key, "amount": amount})))

    # ---------------------------------------------------------------- protocol

    def try_once(self, m):
        """One try: BEGIN, claim, handler, finish, COMMIT. (verdict, drain)."""
        with self.db.cursor() as cur:
            cur.execute("SELECT verdict, drain FROM ferry.consume_claim("
                        "consumer => %s, id => %s, topic => %s, key => %s, seq => %s, "
                        "payload => %s, headers => %s, type => %s, aggregatetype => %s, "
                        "kafka_partition => %s, kafka_offset => %s)",
                        (self.args.name, m.id, m.topic, m.key, m.seq, m.payload,
                         json.dumps(m.headers), m.type, m.aggtype, m.partition, m.offset))
            verdict, drain = cur.fetchone()
            if verdict == "apply":
                self.credit(cur, m)
            cur.execute("SELECT ferry.consume_finish(consumer => %s, id => %s)",
                        (self.args.name, m.id))
        self.db.commit()
        return verdict, drain

    def fail(self, m, error, permanent):
        """After a rollback, in a transaction of its own: count the failure."""
        with self.db.cursor() as cur:
            cur.execute("SELECT outcome, attempts FROM ferry.consume_fail("
                        "consumer => %s, id => %s, topic => %s, key => %s, error => %s, "
                        "seq => %s, payload => %s, headers => %s, type => %s, "
                        "aggregatetype => %s, max_attempts => %s, permanent => %s)",
                        (self.args.name, m.id, m.topic, m.key, error[:1000],
                         None if (permanent and m.poison) else m.seq, m.payload,
                         json.dumps(m.headers), m.type, m.aggtype, self.args.max_attempts,
                         permanent))
            outcome, attempts = cur.fetchone()
        self.db.commit()
        return outcome, attempts

    def reconnect(self):
        try:
            self.db.close()
        except psycopg2.Error:
            pass
        self.db = psycopg2.connect(self.args.db, application_name="credit-service-py")

    def process(self, m, from_held=False):
        """Apply, skip, hold or dead-letter m, within bounded tries. Returns
        (done, drain); done False only when a stop cut it short."""
        transient = 0
        while True:
            try:
                if m.poison:
                    raise Poison(m.poison)
                verdict, drain = self.try_once(m)
            except Poison as e:
                self.db.rollback()
                self.fail(m, str(e), True)
                self.stats["dead_lettered"] += 1
                log("consumer.dead_lettered", id=m.id, reason=str(e))
                return True, False
            except (psycopg2.OperationalError, psycopg2.InterfaceError,
                    psycopg2.extensions.TransactionRollbackError) as e:
                # Not the message's fault: not counted; bounded all the same.
                transient += 1
                if transient >= TRANSIENT_TRIES or stop:
                    raise
                log("consumer.retry", id=m.id, error=str(e).strip()[:200])
                if self.db.closed:
                    time.sleep(min(0.01 * transient, 1.0))
                    try:
                        self.reconnect()
                    except psycopg2.OperationalError:
                        pass
                else:
                    self.db.rollback()
                continue
            except psycopg2.DataError as e:
                # PostgreSQL refused the message's data (class 22): poison.
                self.db.rollback()
                m.poison = "PostgreSQL refused the message: %s" % str(e).strip()[:200]
                continue
            except psycopg2.Error as e:
                # The handler's statement failed for a reason of its own.
                self.db.rollback()
                outcome, attempts = self.fail(m, str(e).strip(), False)
                if outcome == "dead_lettered":
                    self.stats["dead_lettered"] += 1
                    return True, False
                time.sleep(min(0.01 * 2**attempts, 1.0))
                continue
            if verdict == "apply":
                self.stats["drained" if from_held else "applied"] += 1
            elif verdict in ("duplicate", "late"):
                self.stats["duplicates" if verdict == "duplicate" else "late"] += 1
                log("consumer.skipped", verdict=verdict, id=m.id, key=m.key, seq=m.seq)
            elif verdict in ("held", "parked") and not from_held:
                self.stats["held"] += 1
            return True, drain

    def drain(self, topic=None, key=None):
        """Apply held messages whose turn came (one key, or all), bounded."""
        for _ in range(10):
            with self.db.cursor() as cur:
                cur.execute("SELECT message_id, topic, key, seq, payload, headers::text, type, "
                            "aggregatetype FROM ferry.consume_ready(consumer => %s, "
                            "topic => %s, key => %s, max_rows => 100)",
                            (self.args.name, topic, key))
                rows = cur.fetchall()
            self.db.commit()
            progressed = 0
            for row in rows:
                m = Message.from_held(row[:5] + (json.loads(row[5]),) + row[6:])
                verdict_done, _ = self.process(m, from_held=True)
                progressed += verdict_done
                if stop:
                    return
            if len(rows) < 100 or not progressed:
                return

    # ---------------------------------------------------------------- Kafka

    def run(self):
        consumer = Consumer({
            "bootstrap.servers": self.args.kafka,
            "group.id": self.args.name,
            "enable.auto.commit": True,
            "auto.commit.interval.ms": 1000,
            # The offset moves only past what committed in the database.
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
            "topic.metadata.refresh.interval.ms": 1000,
        })
        consumer.subscribe([self.args.topic])
        next_scan = 0.0
        try:
            while not stop:
                if time.monotonic() >= next_scan:
                    self.drain()
                    next_scan = time.monotonic() + HELD_SCAN_SECONDS
                km = consumer.poll(0.2)
                if km is None:
                    continue
                if km.error():
                    if km.error().code() != KafkaError._PARTITION_EOF:
                        log("kafka.error", error=str(km.error()))
                    continue
                m = Message.from_kafka(km)
                done, drain = self.process(m)
                if not done:
                    break
                consumer.store_offsets(message=km)
                if drain:
                    self.drain(m.topic, m.key)
        finally:
            consumer.close()        # commits the stored offsets
        print("stats " + " ".join("%s=%d" % kv for kv in self.stats.items()), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--db", required=True, help="libpq conninfo of this service's database")
    p.add_argument("--kafka", required=True, help="bootstrap servers")
    p.add_argument("--name", required=True, help="the consumer name (also the group id)")
    p.add_argument("--topic", required=True, help="the topic of credits to apply")
    p.add_argument("--emit-topic", help="pass each credit on to this topic")
    p.add_argument("--max-attempts", type=int, default=5, choices=range(1, 1001),
                   metavar="N", help="handler failures before a dead letter (1..1000)")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        Service(args).run()
    except psycopg2.Error as e:
        print("credit-service: %s" % str(e).strip(), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
