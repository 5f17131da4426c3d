// Assertions on what the construct and the example app synthesize: the wiring that cfn-lint
// and checkov cannot see. (The IAM statements are compared with infra/template.yaml by
// infra/tests/test_iac_parity.py.)
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, test } from 'node:test';
import * as assert from 'node:assert/strict';
import { App, Duration, Stack, aws_ec2 as ec2, aws_ecs as ecs } from 'aws-cdk-lib';
import { Match, Template } from 'aws-cdk-lib/assertions';
import { ExampleStack, PIN_HEADER } from '../lib/example-stack';
import { HOOKS, Skewguard } from '../lib/index';

// Stand-ins for cargo-lambda's output: <crate>/bootstrap.
const buildDir = fs.mkdtempSync(path.join(os.tmpdir(), 'skewguard-cdk-test-'));
for (const crate of ['post-test-traffic', 'production-shift', 'post-shift', 'reconciler']) {
  fs.mkdirSync(path.join(buildDir, crate));
  fs.writeFileSync(path.join(buildDir, crate, 'bootstrap'), `#!/bin/sh\n# ${crate}\n`, { mode: 0o755 });
}
const code = { lambdaBuildDir: buildDir };

after(() => fs.rmSync(buildDir, { recursive: true, force: true }));

function example(): Template {
  const app = new App({ context: { 'aws:cdk:enable-path-metadata': true } });
  const stack = new ExampleStack(app, 'Example', { image: 'example:1', deploymentId: 'abc123', skewguardCode: code });
  return Template.fromStack(stack);
}

const logicalIdOf = (template: Template, type: string, pathPart: string): string => {
  const found = Object.entries(template.findResources(type)).filter(([, r]) => (r.Metadata?.['aws:cdk:path'] ?? '').includes(pathPart));
  assert.equal(found.length, 1, `one ${type} under ${pathPart}`);
  return found[0][0];
};

test('protect() registers the three hooks with one hookDetails, the invoke role and a timeout that fits the window', () => {
  const t = example();
  const role = logicalIdOf(t, 'AWS::IAM::Role', 'Skewguard/HookInvokeRole');
  const hooks = Object.values(t.findResources('AWS::ECS::Service'))[0].Properties.DeploymentConfiguration.LifecycleHooks;
  assert.equal(hooks.length, 3);
  const byStages = Object.fromEntries(hooks.map((h: any) => [h.LifecycleStages.join(','), h]));
  for (const [crate, stages] of Object.entries(HOOKS)) {
    const hook = byStages[stages.join(',')];
    assert.ok(hook, `a hook at ${stages.join(',')}`);
    assert.deepEqual(hook.HookTargetArn, { 'Fn::GetAtt': [logicalIdOf(t, 'AWS::Lambda::Function', `Skewguard/${crate}/Function`), 'Arn'] });
    assert.deepEqual(hook.RoleArn, { 'Fn::GetAtt': [role, 'Arn'] });
    assert.deepEqual(hook.HookDetails, { skewWindow: '1h' });
    assert.deepEqual(hook.TimeoutConfiguration, { TimeoutInMinutes: 120, Action: 'ROLLBACK' });
  }
});

test('the service deploys blue/green with the production and test rules and the green target group', () => {
  const t = example();
  t.hasResourceProperties('AWS::ECS::Service', {
    DeploymentController: { Type: 'ECS' },
    DeploymentConfiguration: Match.objectLike({ Strategy: 'BLUE_GREEN' }),
    LoadBalancers: [Match.objectLike({
      TargetGroupArn: { Ref: logicalIdOf(t, 'AWS::ElasticLoadBalancingV2::TargetGroup', 'Example/Blue/') },
      AdvancedConfiguration: Match.objectLike({
        AlternateTargetGroupArn: { Ref: logicalIdOf(t, 'AWS::ElasticLoadBalancingV2::TargetGroup', 'Example/Green/') },
        ProductionListenerRule: { Ref: logicalIdOf(t, 'AWS::ElasticLoadBalancingV2::ListenerRule', 'ProductionRule') },
        TestListenerRule: { Ref: logicalIdOf(t, 'AWS::ElasticLoadBalancingV2::ListenerRule', 'TestRule') },
      }),
    })],
  });
  // Pins need free priorities between the test rule and the production rule.
  t.hasResourceProperties('AWS::ElasticLoadBalancingV2::ListenerRule', { Priority: 10 });
  t.hasResourceProperties('AWS::ElasticLoadBalancingV2::ListenerRule', { Priority: 1000 });
  // The deployment ID the hooks read (deploymentIdFrom: env:DEPLOYMENT_ID).
  t.hasResourceProperties('AWS::ECS::TaskDefinition', {
    ContainerDefinitions: [Match.objectLike({ Environment: Match.arrayWith([{ Name: 'DEPLOYMENT_ID', Value: 'abc123' }]) })],
  });
});

test('skewguard pins on the example listener only', () => {
  const t = example();
  const listener = logicalIdOf(t, 'AWS::ElasticLoadBalancingV2::Listener', 'Alb/Http');
  t.hasResourceProperties('AWS::IAM::ManagedPolicy', {
    PolicyDocument: { Statement: Match.arrayWith([Match.objectLike({ Action: 'elasticloadbalancing:CreateRule', Resource: { Ref: listener } })]) },
  });
});

test('the load balancer drops invalid header fields', () => {
  example().hasResourceProperties('AWS::ElasticLoadBalancingV2::LoadBalancer', {
    LoadBalancerAttributes: Match.arrayWith([{ Key: 'routing.http.drop_invalid_header_fields.enabled', Value: 'true' }]),
  });
});

test('CloudFront forwards the pin header to the API and keys its cache on it; index.html is not cached', () => {
  const t = example();
  t.hasResourceProperties('AWS::CloudFront::OriginRequestPolicy', {
    OriginRequestPolicyConfig: Match.objectLike({ HeadersConfig: { HeaderBehavior: 'whitelist', Headers: Match.arrayWith([PIN_HEADER]) } }),
  });
  t.hasResourceProperties('AWS::CloudFront::CachePolicy', {
    CachePolicyConfig: Match.objectLike({
      ParametersInCacheKeyAndForwardedToOrigin: Match.objectLike({ HeadersConfig: { HeaderBehavior: 'whitelist', Headers: [PIN_HEADER] } }),
    }),
  });
  const config = Object.values(t.findResources('AWS::CloudFront::Distribution'))[0].Properties.DistributionConfig;
  const api = config.CacheBehaviors.find((b: any) => b.PathPattern === '/v2/*');
  assert.ok(api, 'a /v2/* behavior');
  assert.deepEqual(api.OriginRequestPolicyId, { Ref: logicalIdOf(t, 'AWS::CloudFront::OriginRequestPolicy', 'ApiRequests') });
  assert.deepEqual(api.CachePolicyId, { Ref: logicalIdOf(t, 'AWS::CloudFront::CachePolicy', 'ApiCache') });
  const albOrigin = config.Origins.find((o: any) => o.Id === api.TargetOriginId);
  assert.deepEqual(albOrigin.DomainName, { 'Fn::GetAtt': [logicalIdOf(t, 'AWS::ElasticLoadBalancingV2::LoadBalancer', 'Example/Alb/'), 'DNSName'] });
  // The managed CachingDisabled policy on the default behavior (index.html, /).
  assert.equal(config.DefaultCacheBehavior.CachePolicyId, '4135ea2d-6df8-44a3-9df3-4b5a84be39ad');
  assert.equal(config.DefaultRootObject, 'index.html');
});

test('the reconciler: both EventBridge rules, bounded retries, a dead-letter queue with an alarm', () => {
  const t = example();
  const reconciler = logicalIdOf(t, 'AWS::Lambda::Function', 'Skewguard/reconciler/Function');
  const queue = logicalIdOf(t, 'AWS::SQS::Queue', 'ReconcilerDeadLetters');
  t.hasResourceProperties('AWS::Lambda::Function', {
    FunctionName: Match.stringLikeRegexp('-reconciler$'),
    Timeout: 300,
    DeadLetterConfig: { TargetArn: { 'Fn::GetAtt': [queue, 'Arn'] } },
  });
  t.hasResourceProperties('AWS::Lambda::EventInvokeConfig', {
    FunctionName: { Ref: reconciler }, MaximumRetryAttempts: 2, MaximumEventAgeInSeconds: 3600,
  });
  t.hasResourceProperties('AWS::Events::Rule', {
    EventPattern: {
      source: ['aws.ecs'], 'detail-type': ['ECS Deployment State Change'],
      resources: [{ wildcard: Match.anyValue() }],
      detail: { eventName: ['SERVICE_DEPLOYMENT_COMPLETED', 'SERVICE_DEPLOYMENT_FAILED'] },
    },
    Targets: [Match.objectLike({ Arn: { 'Fn::GetAtt': [reconciler, 'Arn'] }, RetryPolicy: { MaximumRetryAttempts: 4, MaximumEventAgeInSeconds: 3600 } })],
  });
  t.hasResourceProperties('AWS::Events::Rule', { ScheduleExpression: 'rate(5 minutes)' });
  t.hasResourceProperties('AWS::CloudWatch::Alarm', {
    MetricName: 'ApproximateNumberOfMessagesVisible',
    Dimensions: [{ Name: 'QueueName', Value: { 'Fn::GetAtt': [queue, 'QueueName'] } }],
    Threshold: 0,
  });
});

test('the sweep: a queue the reconciler fills and works through, bounded, with partial batch failures and a dead-letter queue', () => {
  const t = example();
  const reconciler = logicalIdOf(t, 'AWS::Lambda::Function', 'Skewguard/reconciler/Function');
  const queue = logicalIdOf(t, 'AWS::SQS::Queue', 'Skewguard/SweepQueue');
  const deadLetters = logicalIdOf(t, 'AWS::SQS::Queue', 'Skewguard/SweepDeadLetters');
  t.hasResourceProperties('AWS::SQS::Queue', {
    VisibilityTimeout: 6 * 300,
    SqsManagedSseEnabled: true,
    RedrivePolicy: { deadLetterTargetArn: { 'Fn::GetAtt': [deadLetters, 'Arn'] }, maxReceiveCount: 3 },
  });
  t.hasResourceProperties('AWS::Lambda::EventSourceMapping', {
    FunctionName: { Ref: reconciler },
    EventSourceArn: { 'Fn::GetAtt': [queue, 'Arn'] },
    BatchSize: 10,
    FunctionResponseTypes: ['ReportBatchItemFailures'],
    ScalingConfig: { MaximumConcurrency: 5 },
  });
  t.hasResourceProperties('AWS::Lambda::Function', {
    FunctionName: Match.stringLikeRegexp('-reconciler$'),
    Environment: { Variables: Match.objectLike({ SKEWGUARD_SWEEP_QUEUE_URL: { Ref: queue } }) },
  });
  t.hasResourceProperties('AWS::CloudWatch::Alarm', {
    MetricName: 'ApproximateNumberOfMessagesVisible',
    Dimensions: [{ Name: 'QueueName', Value: { 'Fn::GetAtt': [deadLetters, 'QueueName'] } }],
    Threshold: 0,
  });
});

test('the functions: provided.al2023, arm64, the ledger table and the skew window in their environment', () => {
  const t = example();
  const table = logicalIdOf(t, 'AWS::DynamoDB::Table', 'Skewguard/Ledger');
  const fns = Object.values(t.findResources('AWS::Lambda::Function')).filter((f: any) => f.Metadata['aws:cdk:path'].includes('Skewguard/'));
  assert.equal(fns.length, 4);
  for (const f of fns as any[]) {
    assert.equal(f.Properties.Runtime, 'provided.al2023');
    assert.deepEqual(f.Properties.Architectures, ['arm64']);
    const { SKEWGUARD_SWEEP_QUEUE_URL: sweepQueue, ...common } = f.Properties.Environment.Variables;
    assert.deepEqual(common, { SKEWGUARD_TABLE: { Ref: table }, SKEWGUARD_SKEW_WINDOW: '1h' });
    // Only the reconciler fills the sweep queue.
    assert.equal(sweepQueue !== undefined, JSON.stringify(f.Properties.FunctionName).includes('-reconciler'));
    assert.equal(f.Properties.LoggingConfig.LogFormat, 'JSON');
  }
  t.hasResource('AWS::DynamoDB::Table', {
    DeletionPolicy: 'Retain',
    Properties: Match.objectLike({
      DeletionProtectionEnabled: true,
      PointInTimeRecoverySpecification: { PointInTimeRecoveryEnabled: true },
      TimeToLiveSpecification: { AttributeName: 'expiresAt', Enabled: true },
    }),
  });
});

function service(strategy?: ecs.DeploymentStrategy): { stack: Stack; svc: ecs.FargateService; sg: Skewguard } {
  const app = new App({ context: { 'aws:cdk:enable-path-metadata': true } });
  const stack = new Stack(app, 'S');
  const cluster = new ecs.Cluster(stack, 'C', { vpc: new ec2.Vpc(stack, 'V', { natGateways: 0 }) });
  const td = new ecs.FargateTaskDefinition(stack, 'T');
  td.addContainer('app', { image: ecs.ContainerImage.fromRegistry('x') });
  const svc = new ecs.FargateService(stack, 'Svc', { cluster, taskDefinition: td, deploymentStrategy: strategy, minHealthyPercent: 100 });
  const sg = new Skewguard(stack, 'SG', { listenerArns: ['arn:aws:elasticloadbalancing:eu-west-1:123456789012:listener/app/a/1/2'], clusterName: 'shop', ...code });
  return { stack, svc, sg };
}

test('protect() refuses a rolling service', () => {
  const { stack, svc, sg } = service();
  sg.protect(svc);
  assert.throws(() => Template.fromStack(stack), /deploymentStrategy BLUE_GREEN/);
});

test('protect() refuses a service that has lifecycle hooks of its own', () => {
  const { stack, svc, sg } = service(ecs.DeploymentStrategy.BLUE_GREEN);
  svc.addLifecycleHook(new ecs.DeploymentLifecycleLambdaTarget(sg.functions.reconciler, 'Other', {
    lifecycleStages: [ecs.DeploymentLifecycleStage.PRE_SCALE_UP], role: sg.hookInvokeRole,
  }));
  sg.protect(svc);
  assert.throws(() => Template.fromStack(stack), /lifecycle hooks of its own/);
});

test('protect() passes per-service settings and the matching timeout', () => {
  const { stack, svc, sg } = service(ecs.DeploymentStrategy.BLUE_GREEN);
  sg.protect(svc, { skewWindow: '4h', hookDetails: { afterWindow: 'retired' } });
  const hooks = Object.values(Template.fromStack(stack).findResources('AWS::ECS::Service'))[0].Properties.DeploymentConfiguration.LifecycleHooks;
  for (const h of hooks) {
    assert.deepEqual(h.HookDetails, { afterWindow: 'retired', skewWindow: '4h' });
    assert.equal(h.TimeoutConfiguration.TimeoutInMinutes, 300);
  }
  assert.ok(Duration.minutes(300).toMinutes() > 240);
});

test('a construct without listeners is refused', () => {
  const stack = new Stack(new App(), 'S');
  assert.throws(() => new Skewguard(stack, 'SG', { listenerArns: [], clusterName: 'shop', ...code }), /at least one listener/);
});
