// The generic half of the contract test: reads openapi.yaml and judges real
// HTTP answers against it. It knows nothing about nodestate's routes; every
// route, method, status, media type, header and schema comes from the spec.
import { readFileSync } from 'node:fs';
import YAML from 'yaml';
import Ajv2020 from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';

// The HTTP methods an OpenAPI path item can describe. TRACE is left out of
// the probes because fetch-style clients and proxies refuse it anyway.
export const PROBE_METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'];
const SPEC_ID = 'urn:nodestate:openapi';

function isJsonMedia(type) {
  return type === 'application/json' || /^application\/[^/]+\+json$/.test(type);
}

// "text/plain; version=0.0.4; charset=utf-8" -> {type, params}.
export function parseMediaType(value) {
  const [type, ...rest] = String(value).split(';');
  const params = {};
  for (const p of rest) {
    const eq = p.indexOf('=');
    if (eq < 0) continue;
    params[p.slice(0, eq).trim().toLowerCase()] =
      p.slice(eq + 1).trim().replace(/^"(.*)"$/, '$1').toLowerCase();
  }
  return { type: type.trim().toLowerCase(), params };
}

// A response's Content-Type matches a spec media type when the type is the
// same and it carries every parameter the spec names, with the same value.
function mediaMatches(specKey, actual) {
  const want = parseMediaType(specKey);
  const got = parseMediaType(actual);
  if (want.type !== got.type) return false;
  return Object.entries(want.params).every(([k, v]) => got.params[k] === v);
}

export class Contract {
  constructor(specFile) {
    this.spec = YAML.parse(readFileSync(specFile, 'utf8'));
    // strict mode catches schema typos; allowUnionTypes for [string, 'null'].
    this.ajv = new Ajv2020({ strict: true, allowUnionTypes: true, allErrors: true });
    addFormats(this.ajv);
    // OpenAPI's own numeric formats: int64 values must be integers.
    this.ajv.addFormat('int64', { type: 'number', validate: Number.isSafeInteger });
    this.ajv.addFormat('int32', { type: 'number', validate: (n) => Number.isInteger(n) && Math.abs(n) < 2 ** 31 });
    // Only the schemas go to ajv, as the $defs of one document; every $ref
    // to #/components/schemas/X becomes a $ref to that document's $defs/X.
    const defs = JSON.parse(JSON.stringify(this.spec.components.schemas).replace(
      /"#\/components\/schemas\//g, '"#/$defs/'));
    this.ajv.addSchema({ $id: SPEC_ID, $defs: defs });
    this.validators = new Map();
    this.routes = Object.keys(this.spec.paths).map((template) => ({
      template,
      regex: new RegExp('^' + template.replace(/[.*+?^$()|[\]\\]/g, '\\$&')
        .replace(/\{[^}]+\}/g, '([^/]+)') + '$'),
    }));
    this.passed = 0;
    this.failures = [];
    this.seen = new Set();
  }

  // Follows a local $ref (#/components/...) of a non-schema object.
  deref(obj) {
    let o = obj;
    for (let hops = 0; o && o.$ref; hops++) {
      if (hops > 10 || !o.$ref.startsWith('#/')) throw new Error(`cannot follow $ref ${o.$ref}`);
      o = o.$ref.slice(2).split('/').reduce((node, key) => node?.[key.replace(/~1/g, '/').replace(/~0/g, '~')], this.spec);
      if (o === undefined) throw new Error(`dangling $ref ${obj.$ref}`);
    }
    return o;
  }

  // Compiles a schema from the spec; its $refs point into components.schemas.
  validator(schema) {
    if (this.validators.has(schema)) return this.validators.get(schema);
    // Inline schemas are compiled on their own; point their $refs at the spec.
    const rewritten = JSON.parse(JSON.stringify(schema).replace(
      /"#\/components\/schemas\//g, `"${SPEC_ID}#/$defs/`));
    const v = this.ajv.compile(rewritten);
    this.validators.set(schema, v);
    return v;
  }

  route(path) {
    for (const r of this.routes) if (r.regex.test(path)) return r.template;
    return null;
  }

  // The operations a template declares, as upper-case methods.
  declaredMethods(template) {
    const item = this.spec.paths[template];
    return PROBE_METHODS.concat('TRACE').filter((m) => item[m.toLowerCase()]);
  }

  // Every (method, template, status, media type) the spec lists.
  listed() {
    const out = [];
    for (const template of Object.keys(this.spec.paths)) {
      for (const method of this.declaredMethods(template)) {
        const op = this.spec.paths[template][method.toLowerCase()];
        for (const [status, ref] of Object.entries(op.responses)) {
          const resp = this.deref(ref);
          const media = resp.content ? Object.keys(resp.content) : ['-'];
          for (const m of media) out.push({ method, template, status, media: m });
        }
      }
      // Every path must also be shown to answer 405 to the methods it lacks.
      out.push({ method: 'other', template, status: '405', media: 'application/problem+json' });
    }
    return out;
  }

  static key(e) {
    return `${e.method} ${e.template} ${e.status} [${e.media}]`;
  }

  fail(label, msg) {
    this.failures.push(`${label}: ${msg}`);
  }

  /*
   * Judges one real answer. req: {method, path}; res: {status, headers
   * (lower-case names), body (Buffer)}. Returns the parsed JSON body, if any.
   * Counts one pass, or one failure listing every problem found.
   */
  check(label, req, res) {
    try {
      return this.judge(label, req, res);
    } catch (e) {
      this.fail(`${label} (${req.method} ${req.path} -> ${res.status})`, `checker error: ${e.stack}`);
      return undefined;
    }
  }

  judge(label, req, res) {
    const problems = [];
    const method = req.method.toUpperCase();
    const status = String(res.status);
    const template = this.route(req.path);
    let respDoc;
    let entry;
    if (!template) {
      // No route: the spec's conventions say 404 not-found.
      if (status !== '404') problems.push(`unrouted path answered ${status}, the spec says 404`);
      respDoc = this.deref(this.spec.components.responses.NotFound);
      entry = { method, template: '(no route)', status };
    } else if (!this.spec.paths[template][method.toLowerCase()]) {
      if (status !== '405') problems.push(`${method} is not in the spec for ${template} but answered ${status}, not 405`);
      respDoc = this.deref(this.spec.components.responses.MethodNotAllowed);
      entry = { method: 'other', template, status };
      const allow = (res.headers.allow ?? '').split(',').map((s) => s.trim()).filter(Boolean).sort();
      const want = this.declaredMethods(template).sort();
      if (allow.join(',') !== want.join(','))
        problems.push(`Allow is "${res.headers.allow}" but the spec declares ${want.join(', ')}`);
    } else {
      const op = this.spec.paths[template][method.toLowerCase()];
      entry = { method, template, status };
      if (!op.responses[status]) {
        problems.push(`status ${status} is not listed for ${method} ${template} (listed: ${Object.keys(op.responses).join(', ')})`);
      } else {
        respDoc = this.deref(op.responses[status]);
      }
    }

    let parsed;
    let media = '-';
    if (respDoc) {
      for (const [name, ref] of Object.entries(respDoc.headers ?? {})) {
        const h = this.deref(ref);
        const value = res.headers[name.toLowerCase()];
        // Every header the spec documents for a response must come, whether
        // or not it says required: that is what a client codes against.
        if (value === undefined) {
          problems.push(`header ${name} is missing`);
          continue;
        }
        if (h.schema) {
          const v = this.validator(h.schema);
          const typed = ['integer', 'number'].includes(h.schema.type) && /^-?\d+(\.\d+)?$/.test(value) ? Number(value) : value;
          if (!v(typed)) problems.push(`header ${name}: "${value}" ${this.ajv.errorsText(v.errors)}`);
        }
      }
      const ct = res.headers['content-type'];
      const bodyLen = res.body.length;
      if (respDoc.content) {
        const key = ct && Object.keys(respDoc.content).find((k) => mediaMatches(k, ct));
        if (!key) {
          problems.push(`Content-Type "${ct}" is none of ${Object.keys(respDoc.content).join(' | ')}`);
        } else {
          media = key;
          const schema = respDoc.content[key].schema;
          let value = res.body.toString('utf8');
          if (isJsonMedia(parseMediaType(key).type)) {
            try {
              value = parsed = JSON.parse(value);
            } catch (e) {
              problems.push(`body is not JSON: ${e.message}`);
              value = undefined;
            }
          }
          if (schema && value !== undefined) {
            const v = this.validator(schema);
            if (!v(value)) problems.push(`body does not match the schema: ${this.ajv.errorsText(v.errors)}`);
          }
        }
      } else {
        if (bodyLen !== 0) problems.push(`the spec gives no body but ${bodyLen} bytes came`);
        if (method === 'HEAD' && template && entry.method === 'HEAD') {
          // HEAD is "as for GET": the Content-Type must be the GET's.
          const get = this.spec.paths[template].get;
          const getResp = get?.responses[status] && this.deref(get.responses[status]);
          if (getResp?.content && !(ct && Object.keys(getResp.content).some((k) => mediaMatches(k, ct))))
            problems.push(`HEAD Content-Type "${ct}" is none of the GET's ${Object.keys(getResp.content).join(' | ')}`);
        }
      }
    }
    entry.media = respDoc && respDoc.content ? media : '-';
    this.seen.add(Contract.key(entry));
    if (problems.length) this.fail(`${label} (${method} ${req.path} -> ${status})`, problems.join('; '));
    else this.passed++;
    return parsed;
  }

  /*
   * Fails for every listed (method, path, status, media type) no request
   * exercised, unless the allowlist names it with a reason; and for every
   * allowlist entry that matches nothing in the spec (a stale excuse).
   */
  checkCoverage(allowlist) {
    const excused = (e) => allowlist.find((a) =>
      a.status === e.status && (!a.template || a.template === e.template) &&
      (!a.methods || a.methods.includes(e.method)));
    const listed = this.listed();
    const missing = [];
    let covered = 0;
    for (const e of listed) {
      if (this.seen.has(Contract.key(e))) covered++;
      else if (!excused(e)) missing.push(Contract.key(e));
    }
    if (missing.length) this.fail('coverage', `${missing.length} listed responses never exercised:\n    ${missing.join('\n    ')}`);
    else this.passed++;
    for (const a of allowlist) {
      const hits = listed.filter((e) => excused(e) === a);
      const exercised = hits.filter((e) => this.seen.has(Contract.key(e)));
      if (!hits.length) this.fail('allowlist', `entry for status ${a.status} ${a.template ?? '(any path)'} matches nothing in the spec; remove it`);
      else if (exercised.length) this.fail('allowlist', `entry for status ${a.status} ${a.template ?? '(any path)'} is excused as not triggerable but was exercised: ${exercised.map(Contract.key).join(', ')}`);
      else this.passed++;
    }
    return { listed: listed.length, covered };
  }
}
