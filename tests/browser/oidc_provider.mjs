// An OpenID provider for tests: the `oidc-provider` package (OpenID Certified), configured from
// the JSON in argv[2]:
//   { "port": 0, "clients": [{ client_id, client_secret, redirect_uris, post_logout_redirect_uris }],
//     "accounts": { "<login>": { claims... } } }
// Its own interaction pages (a login form that takes any password, then a consent page) are
// used as they come. It prints one JSON line when it listens: { "issuer": "http://localhost:PORT" }.
//
// A test can make it misbehave as a man in the middle would, by POSTing
// `/__test/mode` with { "mode": M }: the token endpoint's ID token is then
//   "tamper"   - a claim changed and the signature kept (it no longer matches),
//   "wrong_aud" - re-signed with its real key for another audience,
//   "expired"  - re-signed with its real key, expired an hour ago,
//   "nonce"    - re-signed with its real key, with another nonce,
//   "garbage"  - the whole token response is not JSON,
//   "hang"     - the token endpoint never answers;
// "normal" restores it. Every mode applies until changed.

import http from 'node:http';
import * as jose from 'jose';
import Provider from 'oidc-provider';

const cfg = JSON.parse(process.argv[2] || '{}');
const { privateKey, publicKey } = await jose.generateKeyPair('RS256', { extractable: true });
const jwk = { ...(await jose.exportJWK(privateKey)), kid: 'test-key-1', alg: 'RS256', use: 'sig' };

let mode = 'normal';
const server = http.createServer();
await new Promise((r) => server.listen(cfg.port || 0, '127.0.0.1', r));
// Named `localhost` while Atrium is reached at 127.0.0.1: another site for the browser, as a
// real provider is (its cookies apart, Atrium's SameSite rules in force on the way back).
const issuer = `http://localhost:${server.address().port}`;

const accounts = cfg.accounts || {};
const provider = new Provider(issuer, {
  clients: cfg.clients || [],
  jwks: { keys: [jwk] },
  scopes: ['openid', 'profile', 'email', 'groups', 'offline_access'],
  claims: {
    openid: ['sub'],
    profile: ['name', 'preferred_username'],
    email: ['email'],
    groups: ['groups'],
  },
  features: {
    devInteractions: { enabled: true },
    rpInitiatedLogout: { enabled: true },
  },
  async findAccount(ctx, id) {
    const claims = accounts[id];
    if (!claims) return undefined;
    return { accountId: id, async claims() { return { sub: id, ...claims }; } };
  },
  ttl: { Session: 3600, Grant: 3600, Interaction: 600, AuthorizationCode: 60, AccessToken: 600, IdToken: 600 },
});
provider.proxy = false;

async function resign(token, change) {
  const claims = jose.decodeJwt(token);
  change(claims);
  return new jose.SignJWT(claims).setProtectedHeader({ alg: 'RS256', kid: jwk.kid, typ: 'JWT' }).sign(privateKey);
}

provider.use(async (ctx, next) => {
  if (ctx.path === '/__test/mode' && ctx.method === 'POST') {
    let body = '';
    for await (const chunk of ctx.req) body += chunk;
    mode = JSON.parse(body).mode;
    ctx.body = { mode };
    return;
  }
  if (mode === 'hang' && ctx.path === '/token') await new Promise((r) => setTimeout(r, 600000));
  await next();
  if (ctx.path !== '/token' || ctx.status !== 200 || mode === 'normal') return;
  if (mode === 'garbage') {
    ctx.type = 'text/html';
    ctx.body = '<html>Service temporarily unavailable</html>';
    return;
  }
  const body = typeof ctx.body === 'string' ? JSON.parse(ctx.body) : { ...ctx.body };
  const t = body.id_token;
  if (mode === 'tamper') {
    const [h, p, s] = t.split('.');
    const claims = JSON.parse(Buffer.from(p, 'base64url').toString());
    claims.sub = 'someone-else';
    body.id_token = [h, Buffer.from(JSON.stringify(claims)).toString('base64url'), s].join('.');
  } else if (mode === 'wrong_aud') {
    body.id_token = await resign(t, (c) => { c.aud = 'another-client'; });
  } else if (mode === 'expired') {
    const now = Math.floor(Date.now() / 1000);
    body.id_token = await resign(t, (c) => { c.iat = now - 7200; c.exp = now - 3600; });
  } else if (mode === 'nonce') {
    body.id_token = await resign(t, (c) => { c.nonce = 'not-the-one-sent'; });
  }
  ctx.body = body;
});

server.on('request', provider.callback());
process.stdout.write(`${JSON.stringify({ issuer })}\n`);
process.on('SIGTERM', () => process.exit(0));
