#!/usr/bin/env python3
"""The fault drill of scripts/chaos (issue 15, DESIGN.md 5.8). Run through scripts/chaos.

Starts 2 `latchkey serve --no-worker` and 2 `latchkey worker` processes on one Postgres
database of its own, one Redis db of its own and an in-process SMTP sink (aiosmtpd), drives
bounded load from several tenants (sign-ins, TOTP verifies, email sends, wrong codes,
recovery requests) and meanwhile injects the faults; then checks the invariants and exits 1
on any breach."""

import argparse
import base64
import email
import hashlib
import hmac
import json
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

from aiosmtpd.controller import Controller

OPERATOR = "chaos-operator-token-0123456789"
PASSWORD = "chaos horse battery staple"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- SMTP sink

class Sink:
    """Records every message: recipients, subject, Message-ID."""

    def __init__(self):
        self.port = free_port()
        self.messages = []
        self.lock = threading.Lock()
        self.ctl = None
        self.start()

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.content)
        with self.lock:
            self.messages.append({"to": [r.lower() for r in envelope.rcpt_tos],
                                  "subject": str(msg.get("Subject", "")),
                                  "id": str(msg.get("Message-ID", "")).strip()})
        return "250 OK"

    def start(self):
        self.ctl = Controller(self, hostname="127.0.0.1", port=self.port)
        self.ctl.start()

    def stop(self):
        if self.ctl:
            self.ctl.stop()
            self.ctl = None

    def snapshot(self):
        with self.lock:
            return list(self.messages)


# ---------------------------------------------------------------- processes

class Proc:
    def __init__(self, name, args, env, port, workdir):
        self.name, self.args, self.env, self.port = name, args, env, port
        self.log_path = os.path.join(workdir, f"{name}.log")
        self.p = None

    def start(self):
        self.p = subprocess.Popen(self.args, env=self.env, stdout=open(self.log_path, "ab"),
                                  stderr=subprocess.STDOUT, start_new_session=True)

    def kill9(self):
        if self.p and self.p.poll() is None:
            self.p.kill()
            self.p.wait()

    def term(self):
        if self.p and self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(20)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()

    def ready(self):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=3) as r:
                return r.status == 200
        except Exception:
            return False

    def wait_ready(self, timeout=60):
        end = time.time() + timeout
        while time.time() < end:
            if self.p.poll() is not None:
                return False
            if self.ready():
                return True
            time.sleep(0.2)
        return False

    def tail(self, n=15):
        try:
            with open(self.log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-n:]).decode("utf-8", "replace")
        except OSError:
            return ""


# ---------------------------------------------------------------- HTTP

class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.status = {}
        self.bad_5xx = []          # 5xx that are not 503 `unavailable`
        self.unavailable_outside = []  # 503 `unavailable` outside the database's down time
        self.conn_errors = 0
        self.breaches = []

    def add(self, status, code, path, at):
        with self.lock:
            self.status[status] = self.status.get(status, 0) + 1
            if status >= 500:
                if status == 503 and code == "unavailable":
                    self.unavailable_outside.append((at, path))
                else:
                    self.bad_5xx.append((status, code, path))

    def breach(self, text):
        with self.lock:
            self.breaches.append(text)
        log(f"BREACH: {text}")


class Client:
    def __init__(self, apis, stats):
        self.apis, self.stats = apis, stats

    def call(self, method, path, body=None, token=None):
        """(status, json) from one of the API processes; on a refused or cut connection the
        other is tried. `None` status: no answer (the request may or may not have been taken)."""
        order = random.sample(self.apis, len(self.apis))
        data = None if body is None else json.dumps(body).encode()
        cut = False
        for api in order:
            req = urllib.request.Request(f"http://127.0.0.1:{api.port}{path}", data=data, method=method)
            req.add_header("Content-Type", "application/json")
            if token:
                req.add_header("Authorization", f"Bearer {token}")
            try:
                with urllib.request.urlopen(req, timeout=20) as r:
                    raw = r.read()
                    status = r.status
            except urllib.error.HTTPError as e:
                raw, status = e.read(), e.code
            except ConnectionRefusedError:
                with self.stats.lock:
                    self.stats.conn_errors += 1
                continue
            except Exception:
                # Cut after sending (a SIGKILL mid-request): unknown outcome.
                with self.stats.lock:
                    self.stats.conn_errors += 1
                cut = True
                break
            try:
                j = json.loads(raw) if raw else {}
            except ValueError:
                j = {}
            self.stats.add(status, j.get("code") if isinstance(j, dict) else None, path, time.time())
            return status, j
        return None, {"cut": cut}


# ---------------------------------------------------------------- TOTP

def totp(secret_b32, at=None):
    key = base64.b32decode(secret_b32 + "=" * (-len(secret_b32) % 8))
    step = int((at or time.time()) // 30)
    h = hmac.new(key, struct.pack(">Q", step), hashlib.sha1).digest()
    o = h[-1] & 15
    return "%06d" % ((struct.unpack(">I", h[o:o + 4])[0] & 0x7FFFFFFF) % 1000000), step


# ---------------------------------------------------------------- the drill

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--short", action="store_true")
    ap.add_argument("--pg-admin-url", required=True)
    ap.add_argument("--redis-db", type=int, default=13)
    ap.add_argument("--pg-cluster", default="15 main")
    a = ap.parse_args()
    if a.redis_db == 0:
        print("refusing to flush Redis db 0: pick CHAOS_REDIS_DB between 1 and 15")
        return 2
    load_secs = 110 if a.short else 330
    tenants_n, per_tenant = (3, 8) if a.short else (4, 14)

    work = tempfile.mkdtemp(prefix="latchkey-chaos-")
    os.chmod(work, 0o700)
    dbname = f"latchkey_chaos_{os.getpid()}"
    base = a.pg_admin_url.rsplit("/", 1)[0]
    db_url = f"{base}/{dbname}"

    def psql(sql):
        subprocess.run(["psql", "-q", a.pg_admin_url, "-c", sql], check=True, stdout=subprocess.DEVNULL)

    def redis(*args):
        return subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", "6379", "-n", str(a.redis_db), *args],
                              check=True, capture_output=True, text=True).stdout.strip()

    psql(f"CREATE DATABASE {dbname}")
    redis("FLUSHDB")
    sink = Sink()
    key = os.urandom(32).hex()
    env0 = {k: v for k, v in os.environ.items() if not k.startswith("LATCHKEY_")}
    env0.update({
        "LATCHKEY_DATABASE_URL": db_url,
        "LATCHKEY_QUEUE_URL": f"redis://127.0.0.1:6379/{a.redis_db}",
        "LATCHKEY_SMTP_URL": f"smtp://127.0.0.1:{sink.port}",
        "LATCHKEY_SECRET_KEY": key,
        "LATCHKEY_OPERATOR_TOKEN": OPERATOR,
        "LATCHKEY_SIGNIN_PER_IP_PER_MINUTE": "1000000",
        "LATCHKEY_TENANT_REQUESTS_PER_SECOND": "100000",
        "LATCHKEY_ARGON2_MEMORY_KIB": "8192",
        "LATCHKEY_ARGON2_ITERATIONS": "1",
        "LATCHKEY_DB_POOL_SIZE": "6",
        "LATCHKEY_NOTICE_WAIT_MS": "0",
    })

    procs = []
    for name, args in [("api1", ["serve", "--no-worker", "--http-workers", "2"]),
                       ("api2", ["serve", "--no-worker", "--http-workers", "2"]),
                       ("worker1", ["worker"]), ("worker2", ["worker"])]:
        port = free_port()
        env = dict(env0)
        d = os.path.join(work, name)
        os.makedirs(d, mode=0o700)
        env.update({"LATCHKEY_LISTEN": f"127.0.0.1:{port}", "LATCHKEY_DATA_DIR": d,
                    "LATCHKEY_PUBLIC_URL": f"http://localhost:{port}"})
        procs.append(Proc(name, [a.bin, *args], env, port, work))
    api1, api2, w1, w2 = procs
    stats = Stats()
    rc = 1
    try:
        subprocess.run([a.bin, "migrate"], env=procs[0].env, check=True, stdout=subprocess.DEVNULL)
        for p in procs:
            p.start()
        for p in procs:
            if not p.wait_ready():
                print(f"{p.name} did not become ready:\n{p.tail()}")
                return 1
        log("4 processes ready")
        client = Client([api1, api2], stats)
        users = setup(client, tenants_n, per_tenant)
        log(f"{len(users['totp'])} TOTP users, {len(users['email'])} email users, "
            f"{len(users['wrong'])} wrong-code users, {len(users['recovery'])} recovery users")
        rc = drill(a, client, stats, users, sink, procs, redis, load_secs, db_url)
    finally:
        for p in procs:
            p.term()
        sink.stop()
        try:
            psql(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")
        except Exception as e:
            print(f"could not drop {dbname}: {e}")
        try:
            redis("FLUSHDB")
        except Exception:
            pass
        if rc == 0:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"process logs kept in {work}")
    return rc


def must(r, want, what):
    status, body = r
    if status != want:
        raise SystemExit(f"setup: {what}: {status} {body}")
    return body


def setup(client, tenants_n, per_tenant):
    """Tenants with 2FA on (admin by authenticator); per tenant agents of four kinds."""
    users = {"totp": [], "email": [], "wrong": [], "recovery": []}
    run = os.getpid()
    for t in range(tenants_n):
        slug = f"chaos{run}t{t}"
        admin = f"admin@{slug}.test"
        must(client.call("POST", "/api/v1/tenants", {"slug": slug, "name": f"Chaos {t}", "admin": {
            "email": admin, "name": "Admin", "password": PASSWORD}}, OPERATOR), 201, "tenant")
        tok = must(client.call("POST", "/api/v1/auth", {"tenant": slug, "email": admin, "password": PASSWORD}),
                   200, "admin sign-in")["authentication_token"]
        en = must(client.call("POST", "/api/v1/settings/two-factor/enable",
                              {"password": PASSWORD, "method": "authenticator"}, tok), 200, "enable")
        code, _ = totp(en["secret"])
        must(client.call("POST", "/api/v1/settings/two-factor/enable/confirm",
                         {"setup_token": en["setup_token"], "code": code}, tok), 200, "enable confirm")
        for i in range(per_tenant):
            kind = ["totp", "email", "wrong", "recovery"][i % 4]
            addr = f"{kind}{i}@{slug}.test"
            must(client.call("POST", "/api/v1/agents", {"email": addr, "name": f"Agent {i}", "role": "agent",
                                                        "password": PASSWORD}, tok), 201, "agent")
            u = {"tenant": slug, "email": addr}
            if kind in ("totp", "wrong"):
                ch = must(client.call("POST", "/api/v1/auth", {"tenant": slug, "email": addr, "password": PASSWORD}),
                          200, "agent sign-in")["two_factor"]
                s = must(client.call("POST", "/api/v1/auth/2fa/authenticator/setup",
                                     {"challenge_token": ch["challenge_token"]}), 200, "setup")
                code, step = totp(s["secret"])
                must(client.call("POST", "/api/v1/auth/2fa/authenticator/confirm",
                                 {"challenge_token": ch["challenge_token"], "code": code}), 200, "confirm")
                u["secret"] = s["secret"]
                u["used_step"] = step
            users[kind].append(u)
    return users


def drill(a, client, stats, users, sink, procs, redis, load_secs, db_url):
    api1, api2, w1, w2 = procs
    t0 = time.time()
    stop = threading.Event()
    db_down = []          # [start, end] windows
    accepted_steps = {}   # (email, step) -> count
    sends = {}            # email -> {"accepted": n, "uncertain": n}
    blocks = {"checked": 0}
    lock = threading.Lock()

    def sign_in(u):
        return client.call("POST", "/api/v1/auth", {"tenant": u["tenant"], "email": u["email"], "password": PASSWORD})

    def totp_loop(u):
        while not stop.is_set():
            code, step = totp(u["secret"])
            if step <= u["used_step"]:
                time.sleep(0.5)
                continue
            st, b = sign_in(u)
            if st != 200:
                time.sleep(0.5)
                continue
            ch = b["two_factor"]["challenge_token"]
            st, b = client.call("POST", "/api/v1/auth/2fa/verify",
                                {"challenge_token": ch, "method": "authenticator", "code": code})
            if st == 200:
                with lock:
                    accepted_steps[(u["email"], step)] = accepted_steps.get((u["email"], step), 0) + 1
                u["used_step"] = step
                # The same code again, on a new challenge: a replay must be refused.
                st2, b2 = sign_in(u)
                if st2 == 200:
                    st3, _ = client.call("POST", "/api/v1/auth/2fa/verify", {
                        "challenge_token": b2["two_factor"]["challenge_token"], "method": "authenticator",
                        "code": code})
                    if st3 == 200:
                        with lock:
                            accepted_steps[(u["email"], step)] += 1
            time.sleep(random.uniform(0.2, 1.0))

    def email_loop(u):
        sends[u["email"]] = {"accepted": 0, "uncertain": 0}
        while not stop.is_set():
            st, b = sign_in(u)
            if st != 200:
                time.sleep(1)
                continue
            ch = b["two_factor"]["challenge_token"]
            st, b = client.call("POST", "/api/v1/auth/2fa/email/send", {"challenge_token": ch})
            with lock:
                if st == 202:
                    sends[u["email"]]["accepted"] += 1
                elif st is None or st >= 500:
                    sends[u["email"]]["uncertain"] += 1
            wait = 62 if st == 202 else (float(b.get("retry_after_seconds", 5)) + 1 if st == 429 else 2)
            stop.wait(min(wait, 120))

    def wrong_loop(u):
        # 3 wrong codes, then a 4th answer must be 423 otp_blocked (the right code included).
        st, b = sign_in(u)
        if st != 200:
            return
        ch = b["two_factor"]["challenge_token"]
        right, _ = totp(u["secret"])
        wrong = "%06d" % ((int(right) + 500000) % 1000000)
        answers = []
        for _ in range(3):
            st, b = client.call("POST", "/api/v1/auth/2fa/verify",
                                {"challenge_token": ch, "method": "authenticator", "code": wrong})
            answers.append(st)
        if None in answers or any(s >= 500 for s in answers):
            return  # an outage in the middle: not a fair trial
        if answers != [401, 401, 401]:
            stats.breach(f"{u['email']}: wrong codes answered {answers}")
            return
        st, b = client.call("POST", "/api/v1/auth/2fa/verify",
                            {"challenge_token": ch, "method": "authenticator", "code": totp(u["secret"])[0]})
        with lock:
            blocks["checked"] += 1
        if st is not None and st < 500 and st != 423:
            stats.breach(f"{u['email']}: after 3 wrong codes the right code answered {st} {b}, not 423")

    def recovery_loop(u):
        while not stop.is_set():
            st, b = sign_in(u)
            if st == 200 and b.get("two_factor"):
                client.call("POST", "/api/v1/auth/2fa/recovery", {"challenge_token": b["two_factor"]["challenge_token"]})
            stop.wait(random.uniform(2, 5))

    threads = []
    for u in users["totp"]:
        threads.append(threading.Thread(target=totp_loop, args=(u,), daemon=True))
    for u in users["email"]:
        threads.append(threading.Thread(target=email_loop, args=(u,), daemon=True))
    for u in users["recovery"]:
        threads.append(threading.Thread(target=recovery_loop, args=(u,), daemon=True))
    for t in threads:
        t.start()

    # Wrong-code trials spread over the run (one user each: a block lasts 5 minutes).
    wrong_users = list(users["wrong"])

    def wrong_trials():
        gap = load_secs / (len(wrong_users) + 1)
        for u in wrong_users:
            if stop.wait(gap):
                return
            wrong_loop(u)
    wt = threading.Thread(target=wrong_trials, daemon=True)
    wt.start()

    def at(frac):
        end = t0 + load_secs * frac
        while time.time() < end:
            time.sleep(0.2)

    def restart(p, what):
        log(f"SIGKILL {p.name}")
        p.kill9()
        time.sleep(2)
        p.start()
        ok = p.wait_ready(90)
        log(f"{p.name} restarted, ready={ok}")
        if not ok:
            stats.breach(f"{p.name} not ready after its restart ({what}):\n{p.tail()}")

    at(0.12)
    restart(api1, "kill -9")
    at(0.24)
    restart(w1, "kill -9")
    at(0.36)
    n = redis("DBSIZE")
    redis("FLUSHDB")
    log(f"flushed Redis db {a.redis_db} ({n} keys)")
    at(0.48)
    log("SMTP sink stops for 10 s")
    sink.stop()
    time.sleep(10)
    sink.start()
    log("SMTP sink back")
    at(0.62)
    if a.pg_cluster.strip() and a.pg_cluster.strip() != "none":
        log(f"pg_ctlcluster {a.pg_cluster} restart")
        start = time.time()
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", *a.pg_cluster.split(), "restart"], check=False)
        for _ in range(100):
            if subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1"]).returncode == 0:
                break
            time.sleep(0.2)
        # Until every pool has found its connections dead and reconnected.
        db_down.append((start - 1, time.time() + 10))
        log("Postgres back")
    at(0.74)
    restart(api2, "kill -9")
    at(0.84)
    restart(w2, "kill -9")
    at(1.0)
    stop.set()
    log("load stopped; waiting for deliveries to settle")
    for t in threads:
        t.join(30)
    wt.join(30)

    # Settle: until every OTP delivery is final (sent or dropped), at most 90 s.
    def undelivered():
        out = subprocess.run(["psql", "-qAt", db_url, "-c",
                              "SELECT count(*) FROM deliveries WHERE kind = 'otp' AND state NOT IN ('sent', 'dropped', 'failed')"],
                             capture_output=True, text=True)
        return int(out.stdout.strip() or "-1") if out.returncode == 0 else -1
    end = time.time() + 90
    while time.time() < end and undelivered() != 0:
        time.sleep(1)
    time.sleep(2)

    return report(a, stats, users, sink, procs, accepted_steps, sends, blocks, db_down, db_url)


def report(a, stats, users, sink, procs, accepted_steps, sends, blocks, db_down, db_url):
    ok = True

    def check(name, passed, detail=""):
        nonlocal ok
        ok &= passed
        print(f"  [{'ok' if passed else 'BREACH'}] {name}{(': ' + detail) if detail else ''}")

    print("\nchaos drill results")
    rows = subprocess.run(["psql", "-qAt", "-F", "|", db_url, "-c",
                           "SELECT id, state FROM deliveries WHERE kind = 'otp'"], capture_output=True, text=True)
    states = dict(line.split("|") for line in rows.stdout.split() if "|" in line)
    msgs = sink.snapshot()
    # The Message-ID is the delivery id (uuid, no hyphens) with digits and a-f written as
    # letters (a-j, k-p), so that no mail carries a run of six digits but its code.
    def letters(uuid):
        return "".join(chr(ord("a") + int(c)) if c.isdigit() else chr(ord("k") + ord(c) - ord("a"))
                       for c in uuid.replace("-", "").lower())
    by_id = {}
    for m in msgs:
        mid = m["id"].strip("<>").split("@")[0]
        by_id[mid] = by_id.get(mid, 0) + 1
    states = {letters(i): s for i, s in states.items()}
    sent = [i for i, s in states.items() if s == "sent"]
    dropped = [i for i, s in states.items() if s == "dropped"]
    other = {i: s for i, s in states.items() if s not in ("sent", "dropped")}
    doubled = {i: n for i, n in by_id.items() if n > 1}
    missing = [i for i in sent if by_id.get(i, 0) == 0]
    dropped_sent = [i for i in dropped if by_id.get(i, 0) > 0]
    accepted = sum(s["accepted"] for s in sends.values())
    uncertain = sum(s["uncertain"] for s in sends.values())
    otp_mails = {}
    for m in msgs:
        if "sign-in code" in m["subject"]:
            for to in m["to"]:
                otp_mails[to] = otp_mails.get(to, 0) + 1
    per_user_bad = []
    for addr, s in sends.items():
        got = otp_mails.get(addr, 0)
        if got > s["accepted"] + s["uncertain"]:
            per_user_bad.append(f"{addr}: {got} mails for {s['accepted']} accepted (+{s['uncertain']} unanswered) sends")
    check("every accepted email send is recorded, then delivered exactly once or dropped as expired",
          not other and not missing and not dropped_sent and len(states) >= accepted and len(states) <= accepted + uncertain
          and not per_user_bad,
          f"{accepted} accepted sends (+{uncertain} unanswered), {len(states)} OTP deliveries: {len(sent)} sent, "
          f"{len(dropped)} dropped as expired, {len(other)} other {dict(list(other.items())[:5])}; "
          f"missing at the sink: {missing[:5]}; dropped but sent: {dropped_sent[:5]}; {per_user_bad[:3]}")
    check("no message delivered twice", not doubled, f"{len(msgs)} messages at the sink; doubled: {dict(list(doubled.items())[:5])}")
    twice = {k: n for k, n in accepted_steps.items() if n > 1}
    check("no TOTP step accepted twice", not twice,
          f"{len(accepted_steps)} steps accepted (each replayed once on a new challenge); twice: {list(twice)[:5]}")
    breaches = list(stats.breaches)
    check("no user past 3 wrong codes without a block", not breaches and blocks["checked"] > 0,
          f"{blocks['checked']} trials; {breaches[:3]}")
    outside = [(t, p) for t, p in stats.unavailable_outside if not any(s <= t <= e for s, e in db_down)]
    check("no 5xx other than 503 unavailable", not stats.bad_5xx, f"{stats.bad_5xx[:5]}")
    print(f"  [info] 503 unavailable: {len(stats.unavailable_outside)} ; refused or cut connections: {stats.conn_errors}; "
          f"statuses: {dict(sorted(stats.status.items()))}")
    check("503 unavailable only while the database was down (restart + 10 s)", not outside,
          f"{[(round(t - db_down[0][0], 1) if db_down else t, p) for t, p in outside[:5]]}")
    not_ready = [p.name for p in procs if not p.ready()]
    check("all processes ready again", not not_ready, f"not ready: {not_ready}" if not_ready else "4 of 4")
    print("chaos drill: " + ("passed" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
