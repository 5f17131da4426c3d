// Prints the CloudFormation template of the Skewguard construct alone, for the IAM parity test
// (infra/iac-tests): node --import tsx scripts/parity-template.ts '{"listenerArns": [...], "clusterName": "..."}' DIR
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { App, Stack } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import { Skewguard } from '../lib/index';

const { listenerArns, clusterName } = JSON.parse(process.argv[2]);
const buildDir = fs.mkdtempSync(path.join(os.tmpdir(), 'skewguard-parity-'));
for (const crate of ['post-test-traffic', 'production-shift', 'post-shift', 'reconciler']) {
  fs.mkdirSync(path.join(buildDir, crate));
  fs.writeFileSync(path.join(buildDir, crate, 'bootstrap'), `#!/bin/sh\n# ${crate}\n`, { mode: 0o755 });
}
const app = new App({ context: { 'aws:cdk:enable-path-metadata': true } });
const stack = new Stack(app, 'skewguard');
new Skewguard(stack, 'Skewguard', { listenerArns, clusterName, lambdaBuildDir: buildDir });
fs.writeFileSync(path.join(process.argv[3], 'cdk-parity.template.json'), JSON.stringify(Template.fromStack(stack).toJSON(), null, 1));
fs.rmSync(buildDir, { recursive: true, force: true });
