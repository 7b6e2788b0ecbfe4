// Stand-in EHR for the Veritrace viewer tests and demo.
//
// One Node process plays the three parts of a hospital EHR that a SMART App Launch 2 app talks to:
//   * the authorization server: oidc-provider (a certified OpenID Connect implementation), with
//     authorization code + PKCE (S256, required), SMART v2 scopes as resource scopes of the FHIR
//     server, and the launch context (patient, encounter, fhirUser, appContext) in the token response;
//   * the FHIR endpoint the app reads: a gateway on /fhir that checks the access token (signature,
//     issuer, audience, expiry, scopes) and the patient compartment, then forwards to the real FHIR
//     server (sekmet-fhir) with the EHR's own upstream credential;
//   * the EHR front end: /ehr/launches creates a launch (what an EHR does when a clinician clicks a
//     card's smart link) and /ehr/open shows the app in an iframe, the way EHRs embed SMART apps.
//
// The clinician is taken as signed in to the EHR already (that is what an EHR launch means), so login
// and consent are completed without a form; the consent grants exactly the scopes requested.
//
// Usage: node ehr.mjs config.json   (see config.example.json). Prints "READY <port>" when listening.

import { createServer } from 'node:http';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';

import Provider, { errors } from 'oidc-provider';
import * as jose from 'jose';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const host = config.host ?? '127.0.0.1';
const port = Number(config.port);
const issuer = `http://${host}:${port}`;
const fhirBase = `${issuer}/fhir`;
const upstream = config.fhir_upstream.replace(/\/$/, '');

// SMART v2 scopes this EHR's FHIR server knows (granted only when requested).
const RESOURCE_TYPES = [
  'Patient', 'Encounter', 'DiagnosticReport', 'Observation', 'MedicationRequest', 'MedicationStatement',
  'Condition', 'AllergyIntolerance', 'Procedure', 'ImagingStudy', 'DocumentReference', 'Practitioner',
];
const SMART_SCOPES = RESOURCE_TYPES.flatMap((t) => [
  `patient/${t}.rs`, `patient/${t}.r`, `patient/${t}.s`, `user/${t}.rs`, `user/${t}.r`,
]);

const launches = new Map(); // launch id -> { patient, encounter, user, appContext, created }
const launchByGrant = new Map(); // grant id -> launch record

const { privateKey, publicKey } = await jose.generateKeyPair('RS256', { extractable: true });
const privateJwk = { ...(await jose.exportJWK(privateKey)), kid: 'ehr-1', alg: 'RS256', use: 'sig' };

function oneOf(name, allowed) {
  return async (_ctx, value) => {
    if (value !== undefined && !allowed(value)) {
      throw new errors.InvalidRequest(`${name} is not valid here`);
    }
  };
}

const provider = new Provider(issuer, {
  clients: config.clients.map((c) => ({
    client_id: c.client_id,
    client_secret: c.client_secret,
    redirect_uris: c.redirect_uris,
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  })),
  jwks: { keys: [privateJwk] },
  scopes: ['openid', 'fhirUser', 'profile', 'launch', 'launch/patient', 'launch/encounter'],
  claims: { openid: ['sub'], fhirUser: ['fhirUser'], profile: ['name'] },
  extraParams: {
    // SMART: aud must be the FHIR base URL the app was launched from; launch must be one we issued.
    aud: async (_ctx, value) => {
      if (value !== fhirBase) throw new errors.InvalidRequest('aud must be this EHR\'s FHIR base URL');
    },
    launch: oneOf('launch', (v) => launches.has(v)),
  },
  pkce: { required: () => true },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  features: {
    devInteractions: { enabled: false },
    resourceIndicators: {
      enabled: true,
      defaultResource: async () => fhirBase,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (_ctx, resource) => {
        if (resource !== fhirBase) throw new errors.InvalidTarget();
        return {
          scope: SMART_SCOPES.join(' '),
          audience: fhirBase,
          accessTokenFormat: 'jwt',
          accessTokenTTL: config.access_token_ttl_s ?? 3600,
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
  extraTokenClaims: async (_ctx, token) => {
    const launch = launchByGrant.get(token.grantId);
    if (!launch) return undefined;
    return {
      patient: launch.patient,
      ...(launch.encounter ? { encounter: launch.encounter } : {}),
      fhirUser: `Practitioner/${launch.user}`,
      ...(launch.appContext ? { app_context: launch.appContext } : {}),
    };
  },
  findAccount: async (_ctx, id) => ({
    accountId: id,
    claims: async () => ({ sub: id, fhirUser: `${fhirBase}/Practitioner/${id}`, name: id }),
  }),
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  ttl: { AuthorizationCode: 60, Interaction: 600, Session: 3600, Grant: 3600 },
});

// The SMART launch context goes into the token response as well as into the access token.
provider.use(async (ctx, next) => {
  await next();
  if (ctx.oidc?.route === 'token' && ctx.status === 200 && ctx.body?.access_token) {
    const claims = jose.decodeJwt(ctx.body.access_token);
    if (claims.patient) ctx.body.patient = claims.patient;
    if (claims.encounter) ctx.body.encounter = claims.encounter;
    if (claims.app_context) ctx.body.appContext = claims.app_context;
    ctx.body.need_patient_banner = false;
  }
});

async function finishInteraction(req, res, uid) {
  const details = await provider.interactionDetails(req, res);
  const { prompt, params, session } = details;
  const launch = params.launch ? launches.get(params.launch) : standaloneLaunch();
  if (prompt.name === 'login') {
    await provider.interactionFinished(req, res, { login: { accountId: launch.user } },
      { mergeWithLastSubmission: false });
    return;
  }
  if (prompt.name === 'consent') {
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    const missing = prompt.details;
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    const grantId = await grant.save();
    launchByGrant.set(grantId, launch);
    await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
    return;
  }
  throw new Error(`unexpected prompt ${prompt.name} in interaction ${uid}`);
}

function standaloneLaunch() {
  // A standalone launch has no EHR context: the patient picker of this stand-in always picks the
  // configured patient.
  return { patient: config.standalone_patient, user: config.user, appContext: null, encounter: null };
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function send(res, status, body, type = 'application/json') {
  res.writeHead(status, { 'Content-Type': type, 'Cache-Control': 'no-store' });
  res.end(typeof body === 'string' ? body : JSON.stringify(body));
}

function operationOutcome(res, status, code, text) {
  send(res, status, {
    resourceType: 'OperationOutcome', issue: [{ severity: 'error', code, diagnostics: text }],
  }, 'application/fhir+json');
}

function smartConfiguration() {
  return {
    issuer,
    jwks_uri: `${issuer}/jwks`,
    authorization_endpoint: `${issuer}/auth`,
    token_endpoint: `${issuer}/token`,
    grant_types_supported: ['authorization_code'],
    response_types_supported: ['code'],
    token_endpoint_auth_methods_supported: ['client_secret_basic'],
    code_challenge_methods_supported: ['S256'],
    scopes_supported: ['openid', 'fhirUser', 'launch', 'launch/patient', 'launch/encounter', ...SMART_SCOPES],
    capabilities: [
      'launch-ehr', 'launch-standalone', 'client-confidential-symmetric', 'context-ehr-patient',
      'context-ehr-encounter', 'context-standalone-patient', 'permission-v2', 'permission-patient',
      'sso-openid-connect', 'context-passthrough-banner',
    ],
  };
}

const jwks = jose.createLocalJWKSet({ keys: [{ ...(await jose.exportJWK(publicKey)), kid: 'ehr-1', alg: 'RS256' }] });

function compartmentOf(resource) {
  if (resource.resourceType === 'Patient') return `Patient/${resource.id}`;
  for (const field of ['subject', 'patient']) {
    const ref = resource[field]?.reference;
    if (typeof ref === 'string') return ref.replace(/^.*\/(Patient\/[^/]+)$/, '$1');
  }
  return null;
}

function scopeAllows(scopes, type, perm) {
  return scopes.some((s) => {
    const m = /^(patient|user)\/([A-Za-z*]+)\.([cruds]+)$/.exec(s);
    return m && (m[2] === type || m[2] === '*') && [...perm].every((p) => m[3].includes(p));
  });
}

async function fhirGateway(req, res, path) {
  if (path === '/.well-known/smart-configuration') return send(res, 200, smartConfiguration());
  const upstreamUrl = `${upstream}${path}`;
  if (path === '/metadata') {
    const r = await fetch(upstreamUrl, { headers: { Accept: 'application/fhir+json' } });
    return send(res, r.status, await r.text(), 'application/fhir+json');
  }
  if (req.method !== 'GET') return operationOutcome(res, 405, 'not-supported', 'read-only gateway');
  const header = req.headers.authorization ?? '';
  if (!header.startsWith('Bearer ')) return operationOutcome(res, 401, 'login', 'bearer token required');
  let claims;
  try {
    ({ payload: claims } = await jose.jwtVerify(header.slice(7), jwks, { issuer, audience: fhirBase }));
  } catch (e) {
    return operationOutcome(res, 401, 'login', `invalid access token (${e.code ?? 'error'})`);
  }
  const url = new URL(path, 'http://x');
  const [type, id] = url.pathname.split('/').filter(Boolean);
  const scopes = String(claims.scope ?? '').split(' ');
  const perm = id ? 'r' : 's';
  if (!scopeAllows(scopes, type, perm)) {
    return operationOutcome(res, 403, 'forbidden', `token scopes do not allow ${perm} on ${type}`);
  }
  const patientRef = claims.patient ? `Patient/${claims.patient}` : null;
  if (!id && patientRef) {
    const p = url.searchParams.get('patient') ?? url.searchParams.get('subject');
    if (type === 'Patient' ? url.searchParams.get('_id') !== claims.patient
      : p !== claims.patient && p !== patientRef) {
      return operationOutcome(res, 403, 'forbidden', 'search must be limited to the launch patient');
    }
  }
  const r = await fetch(upstreamUrl, {
    headers: { Accept: 'application/fhir+json', Authorization: `Bearer ${config.fhir_upstream_token}` },
  });
  const text = await r.text();
  if (id && r.ok && patientRef) {
    const resource = JSON.parse(text);
    const owner = compartmentOf(resource);
    if (owner !== patientRef && resource.resourceType !== 'Practitioner') {
      return operationOutcome(res, 403, 'forbidden', 'resource is outside the launch patient\'s compartment');
    }
  }
  return send(res, r.status, text, 'application/fhir+json');
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

async function ehrFrontEnd(req, res, url) {
  if (url.pathname === '/ehr/launches' && req.method === 'POST') {
    const body = JSON.parse((await readBody(req)) || '{}');
    if (!body.patient) return send(res, 400, { error: 'patient is required' });
    const id = randomBytes(16).toString('hex');
    launches.set(id, {
      patient: body.patient, encounter: body.encounter ?? null, user: body.user ?? config.user,
      appContext: body.appContext ?? null, created: Date.now(),
    });
    return send(res, 201, { launch: id, iss: fhirBase });
  }
  if (url.pathname === '/ehr/open' && req.method === 'GET') {
    // What the EHR does when a clinician clicks a smart link: new launch, app in an iframe.
    const app = url.searchParams.get('app');
    const patient = url.searchParams.get('patient');
    if (!app || !patient) return send(res, 400, { error: 'app and patient are required' });
    const id = randomBytes(16).toString('hex');
    launches.set(id, {
      patient, encounter: url.searchParams.get('encounter'), user: config.user,
      appContext: url.searchParams.get('appContext'), created: Date.now(),
    });
    const src = new URL(app);
    src.searchParams.set('iss', url.searchParams.get('iss') ?? fhirBase);
    src.searchParams.set('launch', id);
    const html = `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Stand-in EHR</title>
<style>body{margin:0;font:14px system-ui}header{background:#1d3557;color:#fff;padding:6px 12px}
iframe{border:0;width:100%;height:calc(100vh - 32px)}</style></head><body>
<header>Stand-in EHR — patient ${escapeHtml(patient)}</header>
<iframe id="app" title="Veritrace draft viewer" src="${escapeHtml(src.toString())}"></iframe></body></html>`;
    return send(res, 200, html, 'text/html; charset=utf-8');
  }
  return send(res, 404, { error: 'not found' });
}

const handler = provider.callback();
const server = createServer(async (req, res) => {
  const url = new URL(req.url, issuer);
  try {
    if (url.pathname.startsWith('/fhir')) {
      return await fhirGateway(req, res, req.url.slice('/fhir'.length) || '/');
    }
    if (url.pathname.startsWith('/ehr/')) return await ehrFrontEnd(req, res, url);
    const interaction = /^\/interaction\/([^/]+)$/.exec(url.pathname);
    if (interaction) return await finishInteraction(req, res, interaction[1]);
    return handler(req, res);
  } catch (e) {
    console.error(`request failed: ${req.method} ${url.pathname}: ${e.name}`);
    if (!res.headersSent) send(res, 500, { error: 'server_error', error_description: e.name });
  }
});
server.listen(port, host, () => console.log(`READY ${port}`));
