// The node types the UI knows, with the points a form for each asks for (docs/rules.md,
// docs/devices.md, docs/sync.md, DESIGN §10). A field is one point: `point` its type, `kind` how
// it is typed in: text, number (float), int, bool, select, password, or map (keyed points: one
// point per key, as msgService `to` or ingest `field`).

const DESC = { point: 'description', label: 'Description', kind: 'text' };
const DISABLED = { point: 'disabled', label: 'Disabled', kind: 'bool' };

const OPERATORS = {
  number: ['>', '>=', '<', '<=', '=', '!='],
  onOff: ['on', 'off', '=', '!='],
  text: ['=', '!=', 'contains'],
};

export const CONDITION_FIELDS = [
  DESC,
  { point: 'conditionType', label: 'Kind', kind: 'select', options: ['pointValue', 'schedule', 'offline', 'anomaly'], value: 'pointValue' },
  { point: 'nodeID', label: 'Node id (blank: any node under the rule\u2019s parent)', kind: 'node', when: ['pointValue', 'offline', 'anomaly'] },
  { point: 'pointType', label: 'Point type', kind: 'text', when: ['pointValue', 'anomaly'] },
  { point: 'pointKey', label: 'Point key', kind: 'text', when: ['pointValue', 'anomaly'] },
  { point: 'valueType', label: 'Value type', kind: 'select', options: ['number', 'onOff', 'text'], value: 'number', when: ['pointValue'] },
  {
    point: 'operator', label: 'Operator', kind: 'select', value: '>', when: ['pointValue'],
    options: (values) => OPERATORS[values.valueType || 'number'],
  },
  { point: 'value', label: 'Value', kind: 'auto', when: ['pointValue'] },
  { point: 'minActive', label: 'Hold before active (s)', kind: 'number', when: ['pointValue', 'offline', 'anomaly', 'schedule'] },
  { point: 'minInactive', label: 'Hold before inactive (s)', kind: 'number', when: ['pointValue', 'offline', 'anomaly', 'schedule'] },
  { point: 'start', label: 'Start (HH:MM)', kind: 'text', when: ['schedule'] },
  { point: 'end', label: 'End (HH:MM)', kind: 'text', when: ['schedule'] },
  { point: 'weekday', label: 'Weekdays (0 = Sunday): key = day, value = on', kind: 'map', when: ['schedule'] },
  { point: 'tz', label: 'Time zone', kind: 'text', value: 'UTC', when: ['schedule'] },
  { point: 'timeout', label: 'Offline after (s)', kind: 'number', value: 300, when: ['offline'] },
  { point: 'window', label: 'Window (s)', kind: 'number', value: 3600, when: ['anomaly'] },
  { point: 'threshold', label: 'Threshold (std devs)', kind: 'number', value: 3, when: ['anomaly'] },
  { point: 'minSamples', label: 'Samples before judging', kind: 'int', value: 10, when: ['anomaly'] },
  DISABLED,
];

export const ACTION_FIELDS = [
  DESC,
  { point: 'action', label: 'Action', kind: 'select', options: ['setValue', 'notify'], value: 'setValue', required: true },
  { point: 'nodeID', label: 'Node id (setValue: written node, blank = rule\u2019s parent; notify: msgService, blank = all)', kind: 'node' },
  { point: 'pointType', label: 'Point type', kind: 'text', when: ['setValue'] },
  { point: 'pointKey', label: 'Point key', kind: 'text', when: ['setValue'] },
  { point: 'value', label: 'Value (notify: message template)', kind: 'auto' },
  { point: 'repeatInterval', label: 'Repeat every (s, 0 = once)', kind: 'number' },
  DISABLED,
];

export const TYPES = {
  device: { label: 'Device', fields: [DESC, { point: 'model', label: 'Data model (id or description)', kind: 'text' }, { point: 'tag', label: 'Tags', kind: 'map' }] },
  group: { label: 'Group', fields: [DESC, { point: 'tag', label: 'Tags', kind: 'map' }] },
  rule: {
    label: 'Rule',
    fields: [DESC, DISABLED, { point: 'loopLimit', label: 'Loop limit (per s)', kind: 'int' }, { point: 'loopPause', label: 'Loop pause (s)', kind: 'number' }],
    // The rule form also takes its conditions and actions (children).
    children: true,
  },
  condition: { label: 'Condition', fields: CONDITION_FIELDS, kindPoint: 'conditionType' },
  action: { label: 'Action', fields: ACTION_FIELDS, kindPoint: 'action' },
  actionInactive: { label: 'Action when inactive', fields: ACTION_FIELDS, kindPoint: 'action' },
  ingest: {
    label: 'Ingest (MQTT/NATS JSON)',
    fields: [
      DESC,
      { point: 'topic', label: 'MQTT topic filter', kind: 'text' },
      { point: 'subject', label: 'or NATS subject filter', kind: 'text' },
      { point: 'deviceField', label: 'Device field', kind: 'text' },
      { point: 'deviceTopicLevel', label: 'or device topic level', kind: 'int' },
      { point: 'field', label: 'Fields (key = JSON field, value = point type)', kind: 'map' },
      { point: 'timeField', label: 'Time field', kind: 'text' },
      { point: 'timeUnit', label: 'Time unit', kind: 'select', options: ['auto', 's', 'ms', 'us', 'ns', 'rfc3339'], value: 'auto' },
      { point: 'tag', label: 'Tags', kind: 'map' },
      { point: 'deviceModel', label: 'Device model', kind: 'text' },
      { point: 'deviceType', label: 'Device node type', kind: 'text' },
      { point: 'durable', label: 'Durable (QoS 1 held until committed)', kind: 'bool', value: true },
      { point: 'ackWait', label: 'Ack wait (s)', kind: 'number' },
      { point: 'maxDevices', label: 'Max devices', kind: 'int' },
      DISABLED,
    ],
  },
  model: {
    label: 'Data model',
    fields: [
      DESC,
      { point: 'valueType', label: 'Value type per point type', kind: 'map', hint: 'number, int, bool, text' },
      { point: 'unit', label: 'Unit per point type', kind: 'map' },
      { point: 'min', label: 'Min per point type', kind: 'map', valueKind: 'number' },
      { point: 'max', label: 'Max per point type', kind: 'map', valueKind: 'number' },
      { point: 'allowOther', label: 'Allow other point types', kind: 'bool' },
      { point: 'recordRejected', label: 'Record rejected', kind: 'bool', value: true },
    ],
  },
  msgService: {
    label: 'Message service',
    fields: [
      DESC,
      { point: 'service', label: 'Service', kind: 'select', options: ['webhook', 'smtp'], value: 'webhook', required: true },
      { point: 'url', label: 'URL', kind: 'text', when: ['webhook'] },
      { point: 'method', label: 'Method', kind: 'select', options: ['POST', 'PUT', 'PATCH'], value: 'POST', when: ['webhook'] },
      { point: 'header', label: 'Headers', kind: 'map', when: ['webhook'] },
      { point: 'host', label: 'SMTP host', kind: 'text', when: ['smtp'] },
      { point: 'port', label: 'Port', kind: 'int', value: 587, when: ['smtp'] },
      { point: 'tls', label: 'TLS', kind: 'select', options: ['starttls', 'tls', 'none'], value: 'starttls', when: ['smtp'] },
      { point: 'user', label: 'User', kind: 'text', when: ['smtp'] },
      { point: 'password', label: 'Password', kind: 'password', when: ['smtp'] },
      { point: 'from', label: 'From', kind: 'text', when: ['smtp'] },
      { point: 'to', label: 'Recipients', kind: 'map' },
      { point: 'retries', label: 'Retries', kind: 'int' },
      { point: 'timeout', label: 'Timeout (s)', kind: 'number' },
      DISABLED,
    ],
    kindPoint: 'service',
  },
  user: {
    label: 'User',
    admin: true,
    fields: [
      { point: 'email', label: 'Email', kind: 'text', required: true },
      { point: 'firstName', label: 'First name', kind: 'text' },
      { point: 'lastName', label: 'Last name', kind: 'text' },
      { point: 'role', label: 'Role', kind: 'select', options: ['view', 'edit', 'admin'], value: 'view', required: true },
      { point: 'password', label: 'Password', kind: 'password', required: true },
    ],
  },
  sync: {
    label: 'Sync upstream',
    fields: [
      DESC,
      { point: 'uri', label: 'Upstream NATS URL', kind: 'text', required: true },
      { point: 'authToken', label: 'Auth token', kind: 'password' },
      { point: 'parent', label: 'Attach under (upstream node id)', kind: 'text' },
      { point: 'windowRows', label: 'Window rows', kind: 'int' },
      { point: 'windowBytes', label: 'Window bytes', kind: 'int' },
      DISABLED,
    ],
  },
  db: {
    label: 'Database export (InfluxDB)',
    fields: [
      DESC,
      { point: 'url', label: 'URL', kind: 'text', required: true },
      { point: 'database', label: 'Database (InfluxDB 1.x)', kind: 'text' },
      { point: 'org', label: 'Org (InfluxDB 2.x)', kind: 'text' },
      { point: 'bucket', label: 'Bucket (InfluxDB 2.x)', kind: 'text' },
      { point: 'token', label: 'Token', kind: 'password' },
      { point: 'user', label: 'User', kind: 'text' },
      { point: 'password', label: 'Password', kind: 'password' },
      DISABLED,
    ],
  },
  archive: {
    label: 'Archive',
    fields: [DESC, { point: 'topic', label: 'MQTT topic filter', kind: 'text' }, { point: 'subject', label: 'or NATS subject filter', kind: 'text' }, { point: 'retentionDays', label: 'Retention (days)', kind: 'int', value: 30 }, DISABLED],
  },
};

// Child types offered under a node of each type (others: the general list).
export function childTypes(parentType) {
  if (parentType === 'rule') return ['condition', 'action', 'actionInactive'];
  return ['device', 'group', 'rule', 'ingest', 'model', 'msgService', 'user', 'sync', 'db', 'archive'];
}

export const fieldVisible = (field, kind) => !field.when || field.when.includes(kind);

// Points typed into a form -> wire points. Empty inputs are left out (the node client's default
// applies); a map field gives one point per key.
export function formPoints(fields, values, kindPoint) {
  const kind = kindPoint ? values[kindPoint] : undefined;
  const points = [];
  for (const f of fields) {
    if (!fieldVisible(f, kind)) continue;
    const v = values[f.point];
    if (f.kind === 'map') {
      for (const row of v || []) {
        if (!row.key) continue;
        points.push({ type: f.point, key: row.key, value: parseTyped(row.value, f.valueKind || 'auto') });
      }
      continue;
    }
    if (v === undefined || v === '' || v === null) continue;
    if (f.kind === 'bool') {
      points.push({ type: f.point, value: !!v });
      continue;
    }
    points.push({ type: f.point, value: parseTyped(v, f.kind) });
  }
  return points;
}

// A typed-in string -> the value of the kind asked for. 'auto': a number if it reads as one,
// true/false as a bool, else text.
export function parseTyped(text, kind) {
  if (typeof text !== 'string') return text;
  const t = text.trim();
  switch (kind) {
    case 'int': {
      if (!/^[-+]?\d+$/.test(t)) throw new Error(`'${text}' is not a whole number`);
      return Number(t);
    }
    case 'number':
    case 'float': {
      const n = Number(t);
      if (t === '' || !Number.isFinite(n)) throw new Error(`'${text}' is not a number`);
      return n;
    }
    case 'bool':
      return ['1', 'true', 'on', 'yes'].includes(t.toLowerCase());
    case 'json':
      try {
        return JSON.parse(text);
      } catch (err) {
        throw new Error(`not JSON: ${err.message}`);
      }
    case 'auto': {
      if (t !== '' && Number.isFinite(Number(t))) return Number(t);
      if (t === 'true' || t === 'false') return t === 'true';
      return text;
    }
    default:
      return text;
  }
}
