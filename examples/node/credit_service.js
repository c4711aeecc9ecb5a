#!/usr/bin/env node
/*
 * credit_service.js — a ferry consumer in Node.js, on the SQL consumer
 * protocol (README, "From any language").
 *
 *   node credit_service.js --db CONNINFO --kafka BOOTSTRAP --name CONSUMER
 *                          --topic IN [--emit-topic OUT] [--max-attempts N]
 *
 * It keeps account balances in its own database,
 *
 *   account (id text PRIMARY KEY, balance bigint NOT NULL)
 *
 * and applies "Credited" messages keyed by account id, payload
 * {"account": "<id>", "amount": N} with N a positive integer. With
 * --emit-topic it passes each credit on through the outbox
 * (ferry.emit_message) in the same transaction as the credit.
 *
 * Per Kafka message, on one pg client:
 *
 *   BEGIN
 *   SELECT verdict, drain FROM ferry.consume_claim(...)
 *   -- verdict 'apply': the handler (the credit, the emit)
 *   SELECT ferry.consume_finish(...)
 *   COMMIT
 *
 * and only when eachMessage returns does kafkajs count the message as
 * processed (its offset is committed after that, never before). A failed
 * handler rolls back and calls ferry.consume_fail in a transaction of its
 * own: 'retry' or 'dead_lettered', the attempts counted by the database.
 * Connection errors, serialization failures and deadlocks are retried
 * without counting, a bounded number of times.
 *
 * Dependencies are pinned in package-lock.json: `npm ci`. SIGTERM or
 * SIGINT: finish the message in hand, commit offsets, print
 *
 *   stats applied=N duplicates=N late=N held=N dead_lettered=N drained=N
 *
 * and exit 0. Bad flags exit 2; a database or broker it cannot use exits 1.
 */
'use strict';

const crypto = require('crypto');
const { Kafka, logLevel } = require('kafkajs');
const { Client } = require('pg');

const TRANSIENT_TRIES = 100;
const HELD_SCAN_MS = 1000;
const POSITION = /^[1-9][0-9]{0,18}$/;
const POSITION_MAX = 2n ** 63n - 2n;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
// SQLSTATEs that are not the message's fault: retried, not counted.
const TRANSIENT_STATES = new Set(['40001', '40P01', '57P01', '57P02', '57P03', '08000',
                                  '08003', '08006', '08001', '08004']);

function usage(msg) {
  process.stderr.write(`credit-service: ${msg}\n` +
    'usage: credit_service.js --db CONNINFO --kafka BOOTSTRAP --name CONSUMER ' +
    '--topic IN [--emit-topic OUT] [--max-attempts N]\n');
  process.exit(2);
}

function parseArgs(argv) {
  const args = { maxAttempts: 5 };
  const names = { '--db': 'db', '--kafka': 'kafka', '--name': 'name', '--topic': 'topic',
                  '--emit-topic': 'emitTopic', '--max-attempts': 'maxAttempts' };
  for (let i = 0; i < argv.length; i += 2) {
    const k = names[argv[i]];
    if (!k) usage(`unknown option "${argv[i]}"`);
    if (i + 1 >= argv.length || argv[i + 1] === '') usage(`${argv[i]}: needs a value`);
    args[k] = argv[i + 1];
  }
  for (const k of ['db', 'kafka', 'name', 'topic'])
    if (!args[k]) usage(`--${k} is required`);
  const n = Number(args.maxAttempts);
  if (!Number.isInteger(n) || n < 1 || n > 1000) usage('--max-attempts: 1..1000');
  args.maxAttempts = n;
  return args;
}

function log(event, fields) {
  process.stderr.write(JSON.stringify({ event, ...fields }) + '\n');
}

class Poison extends Error {}

/* node-postgres takes URIs; a libpq keyword/value conninfo
 * ("host=/run/postgresql dbname=app user=svc") is read here, quotes and
 * backslash escapes as libpq reads them. */
function pgConfig(conninfo) {
  if (/^postgres(ql)?:\/\//.test(conninfo)) return { connectionString: conninfo };
  const names = { host: 'host', port: 'port', dbname: 'database', user: 'user',
                  password: 'password', application_name: 'application_name' };
  const config = {};
  const re = /\s*([A-Za-z_]+)\s*=\s*(?:'((?:[^'\\]|\\.)*)'|((?:[^\s'\\]|\\.)+))/gy;
  let m;
  let end = 0;
  while ((m = re.exec(conninfo)) !== null) {
    const value = (m[2] !== undefined ? m[2] : m[3]).replace(/\\(.)/g, '$1');
    if (!(m[1] in names)) usage(`--db: "${m[1]}" is not a setting this service passes on`);
    config[names[m[1]]] = value;
    end = re.lastIndex;
  }
  if (conninfo.slice(end).trim() !== '') usage(`--db: cannot read "${conninfo.slice(end)}"`);
  return config;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/* Everything read from Kafka is hostile: a header that is not what a relay
 * writes makes the message poison, never a crash. */
function fromKafka(topic, partition, km) {
  const headers = {};
  let poison = null;
  for (const [name, raw] of Object.entries(km.headers || {})) {
    const value = Array.isArray(raw) ? raw[raw.length - 1] : raw;
    if (value == null) continue;
    const buf = Buffer.isBuffer(value) ? value : Buffer.from(String(value));
    const text = buf.toString('utf8');
    // Not UTF-8, or a NUL byte: PostgreSQL text cannot hold it; left out.
    if (Buffer.compare(Buffer.from(text, 'utf8'), buf) !== 0 || text.includes('\0')) continue;
    headers[name] = text;
  }
  let key = km.key ? km.key.toString('utf8') : '';
  if (km.key && (Buffer.compare(Buffer.from(key, 'utf8'), km.key) !== 0 || key.includes('\0') ||
                 km.key.length > 1024)) {
    key = km.key.toString('hex');
    poison = 'the message key is not UTF-8 text';
  }
  let payload = km.value == null ? 'null' : km.value.toString('utf8');
  if (km.value != null && (Buffer.compare(Buffer.from(payload, 'utf8'), km.value) !== 0 ||
                           payload.includes('\0'))) {
    payload = JSON.stringify(km.value.toString('hex'));
    poison = 'payload is not UTF-8 text';
  }
  const rawId = headers.ferry_id || headers.ce_id;
  let id = rawId && UUID.test(rawId) ? rawId.toLowerCase() : null;
  if (id === null) {
    // The same coordinates always give the same id (a redelivery of that
    // offset is still recognised): a version 8 UUID from a hash.
    const h = crypto.createHash('sha256').update(`${topic}/${partition}/${km.offset}`).digest();
    h[6] = (h[6] & 0x0f) | 0x80;
    h[8] = (h[8] & 0x3f) | 0x80;
    const x = h.subarray(0, 16).toString('hex');
    id = `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
  }
  let seq = null;
  if ('ferry_seq' in headers) {
    const s = headers.ferry_seq;
    if (POSITION.test(s) && BigInt(s) <= POSITION_MAX) seq = s;   // as text: beyond 2^53
    else poison = `header ferry_seq is ${JSON.stringify(s.slice(0, 40))}, not a position`;
  }
  return { id, topic, key, seq, payload, headers,
           type: headers.ferry_type || headers.ce_type || '',
           aggtype: headers.ferry_aggregate_type || '',
           partition, offset: km.offset, poison };
}

class Service {
  constructor(args) {
    this.args = args;
    this.stats = { applied: 0, duplicates: 0, late: 0, held: 0, dead_lettered: 0, drained: 0 };
    this.chain = Promise.resolve();
    this.stopping = false;
  }

  async connect() {
    this.db = new Client({ application_name: 'credit-service-node',
                           ...pgConfig(this.args.db) });
    this.db.on('error', (e) => log('pg.error', { error: e.message }));
    await this.db.connect();
  }

  async reconnect() {
    try { await this.db.end(); } catch (e) { /* already gone */ }
    await this.connect();
  }

  /* One at a time on the one client: Kafka messages and the held scan. */
  exclusive(fn) {
    const p = this.chain.then(fn);
    this.chain = p.catch(() => {});
    return p;
  }

  /* The service's own effect, in the message's transaction. */
  async credit(m) {
    if (m.type !== 'Credited') throw new Poison(`unknown event type ${JSON.stringify(m.type)}`);
    let body;
    try {
      body = JSON.parse(m.payload);
    } catch (e) {
      throw new Poison(`payload is not valid JSON: ${e.message}`);
    }
    const amount = body && typeof body === 'object' ? body.amount : undefined;
    if (!Number.isSafeInteger(amount) || amount <= 0 || amount > 1e12 || body.account !== m.key)
      throw new Poison('payload is not {"account": <the key>, "amount": N > 0}');
    await this.db.query('INSERT INTO account (id, balance) VALUES ($1, $2) ON CONFLICT (id) ' +
                        'DO UPDATE SET balance = account.balance + EXCLUDED.balance',
                        [m.key, amount]);
    if (this.args.emitTopic)
      await this.db.query("SELECT ferry.emit_message(topic => $1, key => $2, type => 'Credited', " +
                          "payload => $3, aggregatetype => 'account')",
                          [this.args.emitTopic, m.key,
                           JSON.stringify({ account: m.key, amount })]);
  }

  /* One try: BEGIN, claim, handler, finish, COMMIT. */
  async tryOnce(m) {
    await this.db.query('BEGIN');
    const r = await this.db.query(
      'SELECT verdict, drain FROM ferry.consume_claim(consumer => $1, id => $2, topic => $3, ' +
      'key => $4, seq => $5, payload => $6, headers => $7, type => $8, aggregatetype => $9, ' +
      'kafka_partition => $10, kafka_offset => $11)',
      [this.args.name, m.id, m.topic, m.key, m.seq, m.payload, JSON.stringify(m.headers),
       m.type, m.aggtype, m.partition, m.offset]);
    const { verdict, drain } = r.rows[0];
    if (verdict === 'apply') await this.credit(m);
    await this.db.query('SELECT ferry.consume_finish(consumer => $1, id => $2)',
                        [this.args.name, m.id]);
    await this.db.query('COMMIT');
    return { verdict, drain };
  }

  /* After a rollback, in a transaction of its own: count the failure. */
  async fail(m, error, permanent) {
    const r = await this.db.query(
      'SELECT outcome, attempts FROM ferry.consume_fail(consumer => $1, id => $2, topic => $3, ' +
      'key => $4, error => $5, seq => $6, payload => $7, headers => $8, type => $9, ' +
      'aggregatetype => $10, max_attempts => $11, permanent => $12)',
      [this.args.name, m.id, m.topic, m.key, String(error).slice(0, 1000),
       permanent && m.poison ? null : m.seq, m.payload, JSON.stringify(m.headers), m.type,
       m.aggtype, this.args.maxAttempts, permanent]);
    return r.rows[0];
  }

  async rollback() {
    try { await this.db.query('ROLLBACK'); } catch (e) { /* the connection is gone */ }
  }

  /* Apply, skip, hold or dead-letter m within bounded tries; the drain flag. */
  async process(m, fromHeld) {
    for (let transient = 0; ;) {
      let res;
      try {
        if (m.poison) throw new Poison(m.poison);
        res = await this.tryOnce(m);
      } catch (e) {
        await this.rollback();
        if (e instanceof Poison) {
          await this.fail(m, e.message, true);
          this.stats.dead_lettered++;
          log('consumer.dead_lettered', { id: m.id, reason: e.message });
          return false;
        }
        const state = e.code || '';
        if (!state || TRANSIENT_STATES.has(state) || this.db.connection?.stream?.destroyed) {
          // Not the message's fault: not counted; bounded all the same.
          if (++transient >= TRANSIENT_TRIES) throw e;
          log('consumer.retry', { id: m.id, error: e.message });
          await sleep(Math.min(10 * transient, 1000));
          if (!state || state.startsWith('08') || state.startsWith('57')) {
            try { await this.reconnect(); } catch (c) { /* tried again next time */ }
          }
          continue;
        }
        if (state.startsWith('22')) {
          m.poison = `PostgreSQL refused the message: ${e.message}`;
          continue;
        }
        const { outcome, attempts } = await this.fail(m, e.message, false);
        if (outcome === 'dead_lettered') {
          this.stats.dead_lettered++;
          return false;
        }
        await sleep(Math.min(10 * 2 ** attempts, 1000));
        continue;
      }
      if (res.verdict === 'apply') this.stats[fromHeld ? 'drained' : 'applied']++;
      else if (res.verdict === 'duplicate' || res.verdict === 'late') {
        this.stats[res.verdict === 'late' ? 'late' : 'duplicates']++;
        log('consumer.skipped', { verdict: res.verdict, id: m.id, key: m.key, seq: m.seq });
      }
      else if ((res.verdict === 'held' || res.verdict === 'parked') && !fromHeld) this.stats.held++;
      return res.drain;
    }
  }

  /* Held messages whose turn came: of one key, or of all; bounded. */
  async drain(topic, key) {
    for (let round = 0; round < 10 && !this.stopping; round++) {
      const r = await this.db.query(
        'SELECT message_id, topic, key, seq::text AS seq, payload, headers, type, aggregatetype ' +
        'FROM ferry.consume_ready(consumer => $1, topic => $2, key => $3, max_rows => 100)',
        [this.args.name, topic || null, key || null]);
      for (const row of r.rows) {
        await this.process({ id: row.message_id, topic: row.topic, key: row.key, seq: row.seq,
                             payload: row.payload, headers: row.headers, type: row.type,
                             aggtype: row.aggregatetype, partition: -1, offset: -1,
                             poison: null }, true);
      }
      if (r.rows.length < 100) return;
    }
  }

  async run() {
    await this.connect();
    await this.db.query('CREATE TABLE IF NOT EXISTS account ' +
                        '(id text PRIMARY KEY, balance bigint NOT NULL)');
    const v = await this.db.query('SELECT ferry.consume_protocol() AS v');
    if (v.rows[0].v !== 1) throw new Error('this ferry speaks another consumer protocol');

    const kafka = new Kafka({ clientId: this.args.name, brokers: this.args.kafka.split(','),
                              logLevel: logLevel.ERROR, retry: { retries: 10 } });
    const consumer = kafka.consumer({ groupId: this.args.name, sessionTimeout: 6000,
                                      heartbeatInterval: 500, metadataMaxAge: 1000 });
    await consumer.connect();
    await consumer.subscribe({ topics: [this.args.topic], fromBeginning: true });
    const scan = setInterval(() => {
      this.exclusive(() => this.drain()).catch((e) => log('consumer.drain_failed',
                                                          { error: e.message }));
    }, HELD_SCAN_MS);
    await consumer.run({
      autoCommit: true,
      autoCommitInterval: 1000,
      eachMessage: ({ topic, partition, message }) => this.exclusive(async () => {
        const m = fromKafka(topic, partition, message);
        const drain = await this.process(m, false);
        if (drain) await this.drain(m.topic, m.key);
      }),
    });

    await new Promise((resolve) => {
      const stop = () => { this.stopping = true; resolve(); };
      process.on('SIGTERM', stop);
      process.on('SIGINT', stop);
    });
    clearInterval(scan);
    await consumer.disconnect();     // finishes the message in hand, commits offsets
    await this.chain;
    await this.db.end();
    process.stdout.write('stats ' + Object.entries(this.stats).map(([k, n]) => `${k}=${n}`)
      .join(' ') + '\n');
  }
}

const service = new Service(parseArgs(process.argv.slice(2)));
service.run().then(() => process.exit(0), (e) => {
  process.stderr.write(`credit-service: ${e.message}\n`);
  process.exit(1);
});
