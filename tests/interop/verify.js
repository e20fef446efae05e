// Stock Node.js verifiers for requests the bridge sent: tests/edge/test_interop.py runs this.
//
// stdin: a JSON list of cases {scheme, method, url, headers, body (base64), secret (base64),
// keyid, publicKey (base64 of the 32 raw bytes, or null)}; stdout: a JSON list, one
// {ok, error} per case. standard-webhooks: the `standardwebhooks` package checks the v1 entry,
// node:crypto the v1a (Ed25519) entries; rfc9421: the `http-message-signatures` package checks
// the signature, node:crypto the Content-Digest against the body.
"use strict";

const crypto = require("node:crypto");
const { Webhook } = require("standardwebhooks");
const { httpbis, createVerifier } = require("http-message-signatures");

const COVERED = [
  "@method",
  "@target-uri",
  "content-type",
  "content-digest",
  "x-idempotency-key",
  "x-producer-id",
];

function ed25519PublicKey(rawBase64) {
  const x = Buffer.from(rawBase64, "base64").toString("base64url");
  return crypto.createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x }, format: "jwk" });
}

function verifyWebhook(c, body) {
  if (c.publicKey === null) {
    new Webhook(`whsec_${c.secret}`).verify(body, c.headers);
    return true;
  }
  // The package verifies v1 only; a v1a entry is Ed25519 over the same content.
  const h = Object.fromEntries(Object.entries(c.headers).map(([k, v]) => [k.toLowerCase(), v]));
  const now = Math.floor(Date.now() / 1000);
  if (Math.abs(now - parseInt(h["webhook-timestamp"], 10)) > 300) {
    throw new Error("timestamp outside the window");
  }
  const content = Buffer.concat([
    Buffer.from(`${h["webhook-id"]}.${h["webhook-timestamp"]}.`),
    body,
  ]);
  const key = ed25519PublicKey(c.publicKey);
  const found = h["webhook-signature"]
    .split(" ")
    .filter((entry) => entry.startsWith("v1a,"))
    .some((entry) => crypto.verify(null, content, key, Buffer.from(entry.slice(4), "base64")));
  if (!found) {
    throw new Error("no matching v1a signature");
  }
  return true;
}

async function verifyRfc9421(c, body) {
  const h = Object.fromEntries(Object.entries(c.headers).map(([k, v]) => [k.toLowerCase(), v]));
  const digest = `sha-256=:${crypto.createHash("sha256").update(body).digest("base64")}:`;
  if (h["content-digest"] !== digest) {
    throw new Error("Content-Digest does not match the body");
  }
  const alg = c.publicKey === null ? "hmac-sha256" : "ed25519";
  const key = c.publicKey === null ? Buffer.from(c.secret, "base64") : ed25519PublicKey(c.publicKey);
  const required = "x-signal-lease" in h ? [...COVERED, "x-signal-lease"] : COVERED;
  const result = await httpbis.verifyMessage(
    {
      keyLookup: async (params) =>
        params.keyid === c.keyid && params.tag === "signal-bridge"
          ? { id: c.keyid, algs: [alg], verify: createVerifier(key, alg) }
          : null,
      requiredParams: ["created", "keyid", "alg", "tag"],
      requiredFields: required,
      maxAge: 300,
      tolerance: 5,
    },
    { method: c.method, url: c.url, headers: c.headers },
  );
  if (result !== true) {
    throw new Error(`verifyMessage returned ${result}`);
  }
  return true;
}

async function main() {
  const chunks = [];
  for await (const chunk of process.stdin) {
    chunks.push(chunk);
  }
  const cases = JSON.parse(Buffer.concat(chunks).toString("utf8"));
  const results = [];
  for (const c of cases) {
    const body = Buffer.from(c.body, "base64");
    try {
      const ok = c.scheme === "standard-webhooks" ? verifyWebhook(c, body) : await verifyRfc9421(c, body);
      results.push({ ok, error: null });
    } catch (err) {
      results.push({ ok: false, error: String(err && err.message ? err.message : err) });
    }
  }
  process.stdout.write(JSON.stringify(results));
}

main().catch((err) => {
  process.stderr.write(String(err && err.stack ? err.stack : err));
  process.exit(1);
});
