// The example app: `npx cdk synth` / `npx cdk deploy` (cdk.json runs this file with tsx).
//   IMAGE=…/checkout:3f2c1ab DEPLOYMENT_ID=3f2c1ab npx cdk deploy
// The functions' code comes from cargo-lambda's output, $CARGO_TARGET_DIR/lambda (default
// target/lambda at the repository root), after `cargo lambda build --release --arm64`.
import * as path from 'node:path';
import { App } from 'aws-cdk-lib';
import { ExampleStack } from '../lib/example-stack';

const app = new App();
const targetDir = process.env.CARGO_TARGET_DIR ?? path.resolve(__dirname, '../../../target');
new ExampleStack(app, 'SkewguardExample', {
  image: process.env.IMAGE ?? 'public.ecr.aws/docker/library/nginx:stable',
  deploymentId: process.env.DEPLOYMENT_ID ?? 'dev',
  skewguardCode: { lambdaBuildDir: process.env.SKEWGUARD_LAMBDA_DIR ?? path.join(targetDir, 'lambda') },
});
app.synth();
