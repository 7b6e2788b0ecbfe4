// A real OpenID Connect provider (panva/oidc-provider) standing in for the hospital IdP in tests and demos.
//
// Authorization code + PKCE for one confidential client; roles in the "roles" claim (scope "roles"),
// taken from users.json by login name. The sign-in form is oidc-provider's development interaction
// (any password is accepted): it is a test stand-in, never a production IdP.
//
// Environment: PORT (required), CLIENT_ID, CLIENT_SECRET, REDIRECT_URI (required), USERS_FILE.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import Provider from 'oidc-provider';

const here = path.dirname(fileURLToPath(import.meta.url));
const port = Number(process.env.PORT);
if (!Number.isInteger(port) || port <= 0) {
  console.error('PORT must be a TCP port number');
  process.exit(2);
}
if (!process.env.REDIRECT_URI) {
  console.error('REDIRECT_URI is required (the review app callback URL)');
  process.exit(2);
}
const clientId = process.env.CLIENT_ID || 'veritrace-review';
const users = JSON.parse(readFileSync(process.env.USERS_FILE || path.join(here, 'users.json'), 'utf8'));
const issuer = `http://127.0.0.1:${port}`;
const scopes = ['openid', 'profile', 'roles'];

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: clientId,
      client_secret: process.env.CLIENT_SECRET || 'test-only-client-secret',
      redirect_uris: [process.env.REDIRECT_URI],
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    },
  ],
  scopes,
  claims: { openid: ['sub'], profile: ['name'], roles: ['roles'] },
  // Put the scope's claims into the ID token too, as many hospital IdPs do for roles.
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  cookies: { keys: ['veritrace-test-idp-cookie-key'] },
  findAccount: async (_ctx, id) => {
    const user = users[id];
    if (!user) return undefined;
    return {
      accountId: id,
      claims: async () => ({ sub: id, name: user.name, roles: user.roles }),
    };
  },
  // First-party client: the hospital pre-approves it, so users see no consent screen.
  loadExistingGrant: async (ctx) => {
    const grantId = ctx.oidc.result?.consent?.grantId
      || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    if (ctx.oidc.client.clientId !== clientId) return undefined;
    const grant = new ctx.oidc.provider.Grant({ clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope(scopes.join(' '));
    grant.addOIDCClaims(['sub', 'name', 'roles']);
    await grant.save();
    return grant;
  },
});

provider.listen(port, '127.0.0.1', () => {
  console.log(`ready ${issuer}`);
});
