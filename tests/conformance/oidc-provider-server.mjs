// A Databricks-shaped OAuth server built on oidc-provider (OpenID certified), for the
// conformance test: /oidc/v1/authorize, /oidc/v1/token, discovery at
// /oidc/.well-known/oauth-authorization-server, scopes all-apis and offline_access, PKCE
// S256 required, refresh tokens rotated on every use (and issued without prompt=consent,
// as Databricks does), plus SCIM Me for the identity check. Loopback only.
//
// Prints {"port": N} on stdout once listening. REDIRECT_URI names the bot's callback.
import http from 'node:http';
import Provider from 'oidc-provider';

const redirectUri = process.env.REDIRECT_URI;
if (!redirectUri) throw new Error('REDIRECT_URI is required');

const server = http.createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const port = server.address().port;
const issuer = `http://127.0.0.1:${port}/oidc`;

const provider = new Provider(issuer, {
  clients: [{
    client_id: 'conformance-client',
    client_secret: 'conformance-secret',
    redirect_uris: [redirectUri],
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
    scope: 'openid offline_access all-apis email profile',
  }],
  scopes: ['openid', 'offline_access', 'all-apis', 'email', 'profile'],
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
  // Claims in the id_token too, as most IdPs send them (the bot reads the IdP's name for
  // the person from it in the identity-provider modes).
  conformIdTokenClaims: false,
  routes: { authorization: '/v1/authorize', token: '/v1/token', jwks: '/jwks.json', userinfo: '/v1/userinfo' },
  pkce: { required: () => true },
  rotateRefreshToken: true,
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  features: { devInteractions: { enabled: true } },
  async findAccount(ctx, id) {
    return { accountId: id, async claims() { return { sub: id, email: id, email_verified: true, name: id }; } };
  },
});
provider.proxy = false;

// SCIM Me, as a Databricks workspace answers it, for whoever holds the access token.
async function scimMe(req, res) {
  const token = (req.headers.authorization || '').replace(/^Bearer /, '');
  const found = token && await provider.AccessToken.find(token);
  if (!found) {
    res.writeHead(401, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ error_code: '401', message: 'Invalid access token' }));
    return;
  }
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(JSON.stringify({
    id: `id-${found.accountId}`, userName: found.accountId, displayName: found.accountId,
    emails: [{ value: found.accountId, primary: true }],
  }));
}

const callback = provider.callback();
server.on('request', (req, res) => {
  if (req.url.startsWith('/api/2.0/preview/scim/v2/Me')) return void scimMe(req, res);
  if (!req.url.startsWith('/oidc')) { res.writeHead(404); res.end(); return; }
  // Databricks' discovery path serves the same document.
  if (req.url.startsWith('/oidc/.well-known/oauth-authorization-server')) {
    req.url = '/oidc/.well-known/openid-configuration';
  }
  // Mounted under /oidc: oidc-provider derives its mount path from originalUrl.
  req.originalUrl = req.url;
  req.url = req.url.slice('/oidc'.length) || '/';
  callback(req, res);
});

process.stdout.write(JSON.stringify({ port }) + '\n');
