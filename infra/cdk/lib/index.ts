// skewguard for the AWS CDK (v2): one construct that deploys skewguard (the same resources and
// IAM statements as infra/template.yaml) and one call that protects an ECS service deployed with
// native blue/green.
import * as path from 'node:path';
import {
  CfnResource, Duration, Fn, RemovalPolicy, Stack, Token,
  aws_cloudwatch as cloudwatch, aws_dynamodb as dynamodb, aws_ecs as ecs, aws_events as events,
  aws_events_targets as targets, aws_iam as iam, aws_lambda as lambda, aws_logs as logs, aws_sqs as sqs,
} from 'aws-cdk-lib';
import { Construct } from 'constructs';

/** The skew windows the hooks accept, each with the hook timeout (minutes) that fits it. */
export const SKEW_WINDOWS = {
  '15m': 60, '30m': 90, '1h': 120, '2h': 180, '4h': 300, '8h': 600, '12h': 840, '23h': 1440,
} as const;
export type SkewWindow = keyof typeof SKEW_WINDOWS;

/** The function crates, and the stages each hook is registered at. */
export const HOOKS = {
  'post-test-traffic': [
    ecs.DeploymentLifecycleStage.RECONCILE_SERVICE,
    ecs.DeploymentLifecycleStage.PRE_SCALE_UP,
    ecs.DeploymentLifecycleStage.POST_TEST_TRAFFIC_SHIFT,
  ],
  'production-shift': [ecs.DeploymentLifecycleStage.TEST_TRAFFIC_SHIFT, ecs.DeploymentLifecycleStage.PRODUCTION_TRAFFIC_SHIFT],
  'post-shift': [ecs.DeploymentLifecycleStage.POST_PRODUCTION_TRAFFIC_SHIFT],
} as const;
export type Hook = keyof typeof HOOKS;
export type FunctionCrate = Hook | 'reconciler';
const FUNCTIONS: Record<FunctionCrate, { timeout: number; description: string }> = {
  'post-test-traffic': { timeout: 120, description: 'skewguard hook at RECONCILE_SERVICE, PRE_SCALE_UP and POST_TEST_TRAFFIC_SHIFT - unpins what a new green replaces, records green, pins the production version' },
  'production-shift': { timeout: 120, description: 'skewguard hook at TEST_TRAFFIC_SHIFT and PRODUCTION_TRAFFIC_SHIFT - pins green, unpins it on rollback' },
  'post-shift': { timeout: 120, description: 'skewguard hook at POST_PRODUCTION_TRAFFIC_SHIFT - holds the previous version pinned for the skew window' },
  // The sweep queue's visibility timeout is six times this timeout.
  reconciler: { timeout: 300, description: 'skewguard reconciler - repairs pins and the ledger after deployments end, and periodically through the sweep queue' },
};

export interface SkewguardProps {
  /**
   * The ALB listeners that carry the services' production rules: pins are created there only.
   * Wildcards may stand for IDs not known yet (`…:listener/app/my-alb/*\/*`).
   */
  readonly listenerArns: string[];
  /**
   * ECS cluster whose services use skewguard: a name, or a pattern where * stands for any
   * characters (`shop-*`; `*` for every cluster of the account and Region). Scopes the ECS
   * calls and the reconciler's deployment events.
   */
  readonly clusterName: string;
  /** Allow DeleteRule only on rules tagged `skewguard:service`. @default true */
  readonly restrictDeletesToSkewguardRules?: boolean;
  /**
   * Where cargo-lambda left the binaries: `$CARGO_TARGET_DIR/lambda`, holding
   * `<crate>/bootstrap`. Ignored for the crates given in `code`.
   */
  readonly lambdaBuildDir?: string;
  /** Code per function crate, instead of `lambdaBuildDir`. */
  readonly code?: Partial<Record<FunctionCrate, lambda.Code>>;
  /** Must match the build. @default ARM_64 */
  readonly architecture?: lambda.Architecture;
  /** Function-level default skewWindow, and the window `protect()` registers. @default '1h' */
  readonly skewWindow?: SkewWindow;
  /** @default INFO */
  readonly logLevel?: lambda.ApplicationLogLevel;
  /** @default ONE_MONTH */
  readonly logRetention?: logs.RetentionDays;
  /**
   * How often the reconciler sweeps every service in the ledger (besides reconciling a service on
   * its deployment state changes): each sweep puts one message per service on the sweep queue.
   * @default rate(5 minutes)
   */
  readonly reconcileSchedule?: events.Schedule;
  /**
   * At most this many reconciler invocations work the sweep queue at once, 10 services each (the
   * event source mapping's maximum concurrency, 2 to 1000). See docs/benchmarks.md. @default 5
   */
  readonly sweepConcurrency?: number;
  /** Prefix of the function names and log groups. @default the stack name */
  readonly name?: string;
  /** The alarms on skewguard's metrics (README "Metrics, dashboard and alarms"). @default all three, no topic */
  readonly alarms?: SkewguardAlarms;
}

/** Which alarms to create, and the SNS topic they notify when they fire and recover. */
export interface SkewguardAlarms {
  /** A hook answered FAILED. @default true */
  readonly hookFailed?: boolean;
  /** The reconciler repaired drift. @default true */
  readonly driftRepaired?: boolean;
  /** The reconciler removed a pin. @default true */
  readonly pinRemovedByReconciler?: boolean;
  /** SNS topic ARN. @default none: the alarms only change state */
  readonly topicArn?: string;
}

/** The dashboard's widgets: title, position, statistic, stacking, and SEARCH expressions. */
function dashboardBody(region: string, loadBalancerName: string): unknown {
  const widgets: [string, number, number, string, boolean, string[]][] = [
    ['Hook invocations by stage', 0, 0, 'Sum', true, ["SEARCH('{skewguard,Function,Stage} MetricName=\"Invocations\"', 'Sum', 300)"]],
    ['Hook answers', 12, 0, 'Sum', true, ["SEARCH('{skewguard,Function} MetricName=(\"Succeeded\" OR \"InProgress\" OR \"Failed\")', 'Sum', 300)"]],
    ['Hold time by service (seconds)', 0, 6, 'Maximum', false, ["SEARCH('{skewguard,Service} MetricName=\"HoldTime\"', 'Maximum', 300)"]],
    ['Errors by kind', 12, 6, 'Sum', true, ["SEARCH('{skewguard,Function,ErrorKind} MetricName=\"Errors\"', 'Sum', 300)"]],
    ['Reconciler repairs by kind', 0, 12, 'Sum', true, ["SEARCH('{skewguard,Function,RepairKind} MetricName=\"Repairs\"', 'Sum', 300)"]],
    ['Pins created and removed', 12, 12, 'Sum', false, ["SEARCH('{skewguard,Function} MetricName=(\"PinsCreated\" OR \"PinsRemoved\")', 'Sum', 300)"]],
    ['Duration (ms, maximum) and AWS calls per invocation (average)', 0, 18, 'Maximum', false, [
      "SEARCH('{skewguard,Function} MetricName=\"Duration\"', 'Maximum', 300)",
      "SEARCH('{skewguard,Function} MetricName=\"AwsCalls\"', 'Average', 300)",
    ]],
    [`Requests per target group (load balancer ${loadBalancerName})`, 12, 18, 'Sum', false, [
      `SEARCH('{AWS/ApplicationELB,LoadBalancer,TargetGroup} MetricName=\"RequestCount\" ${loadBalancerName}', 'Sum', 60)`,
    ]],
  ];
  return {
    widgets: widgets.map(([title, x, y, stat, stacked, searches]) => ({
      type: 'metric', x, y, width: 12, height: 6,
      properties: {
        title, region, view: 'timeSeries', stacked, stat, period: 300,
        metrics: searches.map((expression, i) => [{ expression, id: `e${i}`, yAxis: i === 0 ? 'left' : 'right' }]),
      },
    })),
  };
}

export interface ProtectOptions {
  /** The service's skew window (its hooks' `hookDetails.skewWindow`). @default the construct's */
  readonly skewWindow?: SkewWindow;
  /** More per-service settings for `hookDetails` (README "Settings"), e.g. `{ afterWindow: 'retired' }`. */
  readonly hookDetails?: Record<string, string>;
  /** What ECS does when a hook times out. @default ROLLBACK */
  readonly timeoutAction?: 'ROLLBACK' | 'CONTINUE';
}

/** Skips a checkov check on a construct's CloudFormation resource, with the reason. */
export function skip(construct: Construct, checks: Record<string, string>): void {
  const resource = construct.node.defaultChild as CfnResource;
  const existing = (resource.getMetadata('checkov') as { skip: { id: string; comment: string }[] } | undefined)?.skip ?? [];
  resource.addMetadata('checkov', { skip: [...existing, ...Object.entries(checks).map(([id, comment]) => ({ id, comment }))] });
}

/** skewguard: the ledger, the three lifecycle hooks, the reconciler and their roles. */
export class Skewguard extends Construct {
  readonly table: dynamodb.Table;
  readonly functions: Record<FunctionCrate, lambda.Function>;
  readonly roles: Record<FunctionCrate, iam.Role>;
  /** The role ECS assumes to invoke the hooks. */
  readonly hookInvokeRole: iam.Role;
  readonly deadLetterQueue: sqs.Queue;
  /** One message per service and scheduled sweep, worked through by the reconciler. */
  readonly sweepQueue: sqs.Queue;
  /** Sweep messages whose service failed every receive. */
  readonly sweepDeadLetterQueue: sqs.Queue;
  readonly skewWindow: SkewWindow;

  constructor(scope: Construct, id: string, props: SkewguardProps) {
    super(scope, id);
    if (!Token.isUnresolved(props.listenerArns) && props.listenerArns.length === 0) {
      throw new Error('Skewguard: listenerArns must name at least one listener');
    }
    const stack = Stack.of(this);
    const name = props.name ?? stack.stackName;
    const clusterName = props.clusterName;
    if (!Token.isUnresolved(clusterName) && (!/^[A-Za-z0-9_*-]{1,255}$/.test(clusterName) || clusterName.includes('**'))) {
      throw new Error(`Skewguard: clusterName ${clusterName}: a cluster name, or a pattern with single * wildcards`);
    }
    this.skewWindow = props.skewWindow ?? '1h';
    const ecsPrefix = `arn:${stack.partition}:ecs:${stack.region}:${stack.account}`;
    const listenerRules = props.listenerArns.map((arn) => Token.isUnresolved(arn)
      ? Fn.join('', [Fn.join(':listener-rule/', Fn.split(':listener/', arn)), '/*'])
      : `${arn.replace(':listener/', ':listener-rule/')}/*`);

    // -------------------------------------------------------------------------- the ledger
    this.table = new dynamodb.Table(this, 'Ledger', {
      partitionKey: { name: 'serviceArn', type: dynamodb.AttributeType.STRING },
      sortKey: { name: 'deploymentId', type: dynamodb.AttributeType.STRING },
      billingMode: dynamodb.BillingMode.PAY_PER_REQUEST,
      pointInTimeRecoverySpecification: { pointInTimeRecoveryEnabled: true },
      timeToLiveAttribute: 'expiresAt',
      encryption: dynamodb.TableEncryption.AWS_MANAGED,
      deletionProtection: true,
      removalPolicy: RemovalPolicy.RETAIN,
    });

    skip(this.table, { CKV_AWS_119: 'The AWS managed key: no key policy or KMS grant to manage; the ledger holds ARNs and deployment IDs' });

    // -------------------------------------------------------------------------- shared policies
    const describeRevisions = new iam.ManagedPolicy(this, 'DescribeRevisionsPolicy', {
      description: 'skewguard - read ECS service revisions and task definitions',
      statements: [
        new iam.PolicyStatement({
          sid: 'DescribeServiceRevisions',
          actions: ['ecs:DescribeServiceRevisions'],
          resources: [`${ecsPrefix}:service/${clusterName}/*`, `${ecsPrefix}:service-revision/${clusterName}/*`],
        }),
        new iam.PolicyStatement({
          sid: 'DescribeTaskDefinitionHasNoResourceLevelPermissions',
          actions: ['ecs:DescribeTaskDefinition'],
          resources: ['*'],
        }),
      ],
    });
    const pinRules = new iam.ManagedPolicy(this, 'PinRulesPolicy', {
      description: 'skewguard - manage its pin rules on the given ALB listeners',
      statements: [
        new iam.PolicyStatement({
          sid: 'DescribeHasNoResourceLevelPermissions',
          actions: ['elasticloadbalancing:DescribeRules', 'elasticloadbalancing:DescribeTags'],
          resources: ['*'],
        }),
        new iam.PolicyStatement({
          sid: 'CreatePinRulesOnTheseListenersOnlyAndOnlyTagged',
          actions: ['elasticloadbalancing:CreateRule'],
          resources: props.listenerArns,
          conditions: {
            Null: { 'aws:RequestTag/skewguard:service': 'false', 'aws:RequestTag/skewguard:deployment-id': 'false' },
          },
        }),
        new iam.PolicyStatement({
          sid: 'TagPinRulesOnlyWhileCreatingThem',
          actions: ['elasticloadbalancing:AddTags'],
          resources: listenerRules,
          conditions: { StringEquals: { 'elasticloadbalancing:CreateAction': 'CreateRule' } },
        }),
        new iam.PolicyStatement({
          sid: 'DeletePinRulesOfTheseListeners',
          actions: ['elasticloadbalancing:DeleteRule'],
          resources: listenerRules,
          conditions: (props.restrictDeletesToSkewguardRules ?? true)
            ? { Null: { 'aws:ResourceTag/skewguard:service': 'false' } }
            : undefined,
        }),
      ],
    });
    const ledgerWrite = new iam.ManagedPolicy(this, 'LedgerWritePolicy', {
      description: 'skewguard - read and conditionally update the ledger table',
      statements: [new iam.PolicyStatement({
        sid: 'LedgerTableOnly',
        // TransactWriteItems is authorised per item as UpdateItem, PutItem or DeleteItem.
        actions: ['dynamodb:Query', 'dynamodb:UpdateItem', 'dynamodb:PutItem', 'dynamodb:DeleteItem'],
        resources: [this.table.tableArn],
      })],
    });

    // Retention copies (retention service mode, started by post-shift): read the load balancer for
    // the quota check and the copy's targets' health; create the copy's target group (named sg-*)
    // and service (named <service>-sg-<deployment ID>, in the cluster) only carrying
    // skewguard:managed=true, and tag them only while creating them. No iam:PassRole: the copy
    // sets no `role` (ECS uses its service-linked role) and reuses the task definition's roles.
    const retentionTargetGroups = `arn:${stack.partition}:elasticloadbalancing:${stack.region}:${stack.account}:targetgroup/sg-*/*`;
    const retentionServices = `${ecsPrefix}:service/${clusterName}/*-sg-*`;
    const retentionStart = new iam.ManagedPolicy(this, 'RetentionStartPolicy', {
      description: 'skewguard - create the retention copies of retention service mode',
      statements: [
        new iam.PolicyStatement({
          sid: 'DescribeListenersAndTargetHealthHaveNoResourceLevelPermissions',
          actions: ['elasticloadbalancing:DescribeListeners', 'elasticloadbalancing:DescribeTargetHealth'],
          resources: ['*'],
        }),
        new iam.PolicyStatement({
          sid: 'CreateOnlyTaggedRetentionTargetGroups',
          actions: ['elasticloadbalancing:CreateTargetGroup'],
          resources: [retentionTargetGroups],
          conditions: { StringEquals: { 'aws:RequestTag/skewguard:managed': 'true' } },
        }),
        new iam.PolicyStatement({
          sid: 'TagRetentionTargetGroupsOnlyWhileCreatingThem',
          actions: ['elasticloadbalancing:AddTags'],
          resources: [retentionTargetGroups],
          conditions: {
            StringEquals: { 'elasticloadbalancing:CreateAction': 'CreateTargetGroup', 'aws:RequestTag/skewguard:managed': 'true' },
          },
        }),
        new iam.PolicyStatement({
          sid: 'CreateOnlyTaggedRetentionServices',
          actions: ['ecs:CreateService'],
          resources: [retentionServices],
          conditions: { StringEquals: { 'aws:RequestTag/skewguard:managed': 'true' } },
        }),
        new iam.PolicyStatement({
          sid: 'TagRetentionServicesOnlyWhileCreatingThem',
          actions: ['ecs:TagResource'],
          resources: [retentionServices],
          conditions: { StringEquals: { 'ecs:CreateAction': 'CreateService', 'aws:RequestTag/skewguard:managed': 'true' } },
        }),
      ],
    });

    // Retention copies: scale to 0 and delete the retention services and target groups skewguard
    // created (only those tagged skewguard:managed=true), and look whether one is already gone.
    const retentionTeardown = new iam.ManagedPolicy(this, 'RetentionTeardownPolicy', {
      description: 'skewguard - tear down the retention copies it created',
      statements: [
        new iam.PolicyStatement({
          sid: 'ScaleDownAndDeleteOnlyTaggedServices',
          actions: ['ecs:UpdateService', 'ecs:DeleteService'],
          resources: [`${ecsPrefix}:service/${clusterName}/*`],
          conditions: { StringEquals: { 'aws:ResourceTag/skewguard:managed': 'true' } },
        }),
        new iam.PolicyStatement({
          sid: 'DescribeServicesOfTheCluster',
          actions: ['ecs:DescribeServices'],
          resources: [`${ecsPrefix}:service/${clusterName}/*`],
        }),
        new iam.PolicyStatement({
          sid: 'DeleteOnlyTaggedRetentionTargetGroups',
          actions: ['elasticloadbalancing:DeleteTargetGroup'],
          resources: [retentionTargetGroups],
          conditions: { StringEquals: { 'aws:ResourceTag/skewguard:managed': 'true' } },
        }),
        new iam.PolicyStatement({
          sid: 'DescribeTargetGroupsHasNoResourceLevelPermissions',
          actions: ['elasticloadbalancing:DescribeTargetGroups'],
          resources: ['*'],
        }),
      ],
    });

    // -------------------------------------------------------------------------- the functions
    this.deadLetterQueue = new sqs.Queue(this, 'ReconcilerDeadLetters', {
      retentionPeriod: Duration.days(14),
      encryption: sqs.QueueEncryption.SQS_MANAGED,
      enforceSSL: true,
    });
    skip(this.deadLetterQueue, { CKV_AWS_27: 'Encrypted with SQS-managed keys (SqsManagedSseEnabled), which this check does not recognise' });
    new cloudwatch.Alarm(this, 'ReconcilerDeadLettersAlarm', {
      alarmDescription: 'A reconciler invocation failed every retry: its event is in the dead-letter queue (the service was not repaired; the next scheduled run retries it).',
      metric: this.deadLetterQueue.metricApproximateNumberOfMessagesVisible({ statistic: 'Maximum', period: Duration.minutes(5) }),
      threshold: 0,
      comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
      evaluationPeriods: 1,
      treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
    });

    // One message per service and sweep ({"serviceArn": ...}). A message whose service failed
    // three receives in a row moves to the sweep's dead-letter queue; later sweeps enqueue the
    // service again meanwhile.
    this.sweepDeadLetterQueue = new sqs.Queue(this, 'SweepDeadLetters', {
      queueName: `${name}-sweep-dead-letters`,
      retentionPeriod: Duration.days(14),
      encryption: sqs.QueueEncryption.SQS_MANAGED,
      enforceSSL: true,
    });
    skip(this.sweepDeadLetterQueue, { CKV_AWS_27: 'Encrypted with SQS-managed keys (SqsManagedSseEnabled), which this check does not recognise' });
    this.sweepQueue = new sqs.Queue(this, 'SweepQueue', {
      queueName: `${name}-sweep`,
      // Six times the reconciler's timeout, as AWS recommends for a function's queue.
      visibilityTimeout: Duration.seconds(FUNCTIONS.reconciler.timeout * 6),
      // Longer than three receives, so a failing message reaches the dead-letter queue.
      retentionPeriod: Duration.days(1),
      encryption: sqs.QueueEncryption.SQS_MANAGED,
      enforceSSL: true,
      deadLetterQueue: { queue: this.sweepDeadLetterQueue, maxReceiveCount: 3 },
    });
    skip(this.sweepQueue, { CKV_AWS_27: 'Encrypted with SQS-managed keys (SqsManagedSseEnabled), which this check does not recognise' });
    new cloudwatch.Alarm(this, 'SweepDeadLettersAlarm', {
      alarmDescription: 'A service failed to reconcile three sweeps\' receives in a row: its message is in the sweep\'s dead-letter queue. The reconciler\'s "reconciling failed" log lines name the service and the error_kind; redrive the messages to the sweep queue once fixed.',
      metric: this.sweepDeadLetterQueue.metricApproximateNumberOfMessagesVisible({ statistic: 'Maximum', period: Duration.minutes(5) }),
      threshold: 0,
      comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
      evaluationPeriods: 1,
      treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
    });

    // -------------------------------------------------------------------------- dashboard, alarms
    // The functions write their metrics as CloudWatch embedded metric format lines in their logs
    // (namespace skewguard): nothing to create for the metrics themselves. The request rates come
    // from the load balancer of the first listener, one line per target group.
    const loadBalancerName = Fn.select(1, Fn.split('/', Fn.select(1, Fn.split(':listener/', Fn.select(0, props.listenerArns)))));
    new cloudwatch.CfnDashboard(this, 'Dashboard', {
      dashboardName: `${name}-skewguard`,
      dashboardBody: stack.toJsonString(dashboardBody(stack.region, loadBalancerName)),
    });
    const alarms = props.alarms ?? {};
    const notify = (alarm: cloudwatch.Alarm) => {
      if (alarms.topicArn) {
        const action = { bind: () => ({ alarmActionArn: alarms.topicArn as string }) };
        alarm.addAlarmAction(action);
        alarm.addOkAction(action);
      }
    };
    const skewguardMetric = (metricName: string, dimensionsMap: Record<string, string>, period: Duration) =>
      new cloudwatch.Metric({ namespace: 'skewguard', metricName, dimensionsMap, statistic: 'Sum', period });
    const onceOrMore = {
      threshold: 1,
      comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
      evaluationPeriods: 1,
      treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
    };
    if (alarms.hookFailed ?? true) {
      notify(new cloudwatch.Alarm(this, 'HookFailedAlarm', {
        alarmName: `${name}-hook-failed`,
        alarmDescription: 'A skewguard hook answered FAILED: ECS rolls that deployment back. The hook\'s log line "hook failed" names the service, the stage and the error_kind.',
        metric: new cloudwatch.MathExpression({
          expression: 'SUM([posttest, shift, postshift])',
          label: 'FAILED answers',
          period: Duration.minutes(1),
          usingMetrics: {
            posttest: skewguardMetric('Failed', { Function: 'post-test-traffic' }, Duration.minutes(1)),
            shift: skewguardMetric('Failed', { Function: 'production-shift' }, Duration.minutes(1)),
            postshift: skewguardMetric('Failed', { Function: 'post-shift' }, Duration.minutes(1)),
          },
        }),
        ...onceOrMore,
      }));
    }
    if (alarms.driftRepaired ?? true) {
      notify(new cloudwatch.Alarm(this, 'DriftRepairedAlarm', {
        alarmName: `${name}-drift-repaired`,
        alarmDescription: 'The skewguard reconciler repaired drift between the ledger, the listener and ECS. Its "repaired" log lines say what and why (kind, deployment_id, rule_arn, detail).',
        metric: skewguardMetric('Repairs', { Function: 'reconciler' }, Duration.minutes(5)),
        ...onceOrMore,
      }));
    }
    if (alarms.pinRemovedByReconciler ?? true) {
      notify(new cloudwatch.Alarm(this, 'PinRemovedByReconcilerAlarm', {
        alarmName: `${name}-pin-removed-by-reconciler`,
        alarmDescription: 'The skewguard reconciler removed a pin rule the hooks had left on the listener (its version no longer runs, or it pointed elsewhere). Its "repaired" log line with kind pin-removed names the rule and why.',
        metric: skewguardMetric('Repairs', { Function: 'reconciler', RepairKind: 'pin-removed' }, Duration.minutes(5)),
        ...onceOrMore,
      }));
    }

    const functions = {} as Record<FunctionCrate, lambda.Function>;
    const roles = {} as Record<FunctionCrate, iam.Role>;
    for (const [crate, spec] of Object.entries(FUNCTIONS) as [FunctionCrate, typeof FUNCTIONS[FunctionCrate]][]) {
      const scope = new Construct(this, crate);
      const logGroup = new logs.LogGroup(scope, 'LogGroup', {
        logGroupName: `/aws/lambda/${name}-${crate}`,
        retention: props.logRetention ?? logs.RetentionDays.ONE_MONTH,
        removalPolicy: RemovalPolicy.DESTROY,
      });
      const own: iam.PolicyStatement[] = [new iam.PolicyStatement({
        sid: 'OwnLogGroup',
        actions: ['logs:CreateLogStream', 'logs:PutLogEvents'],
        resources: [logGroup.logGroupArn],
      })];
      const describeDeployments = new iam.PolicyStatement({
        sid: 'DescribeServiceDeployments',
        actions: ['ecs:DescribeServiceDeployments'],
        resources: [`${ecsPrefix}:service/${clusterName}/*`, `${ecsPrefix}:service-deployment/${clusterName}/*`],
      });
      if (crate === 'post-test-traffic') own.push(describeDeployments);
      if (crate === 'reconciler') {
        own.push(
          // The idle check of retained versions: the ALB's RequestCount per target group.
          new iam.PolicyStatement({
            sid: 'GetMetricDataHasNoResourceLevelPermissions',
            actions: ['cloudwatch:GetMetricData'],
            resources: ['*'],
          }),
          new iam.PolicyStatement({
            sid: 'ListServiceDeployments',
            actions: ['ecs:ListServiceDeployments'],
            resources: [`${ecsPrefix}:service/${clusterName}/*`],
          }),
          describeDeployments,
          new iam.PolicyStatement({ sid: 'EveryServiceInTheLedger', actions: ['dynamodb:Scan'], resources: [this.table.tableArn] }),
          new iam.PolicyStatement({
            sid: 'FailedEventsToTheDeadLetterQueue',
            actions: ['sqs:SendMessage'],
            resources: [this.deadLetterQueue.queueArn],
          }),
          // A scheduled run puts one message per service on the sweep queue.
          new iam.PolicyStatement({ sid: 'EnqueueTheSweep', actions: ['sqs:SendMessage'], resources: [this.sweepQueue.queueArn] }),
          // The event source mapping reads and deletes the sweep queue's messages with this role.
          new iam.PolicyStatement({
            sid: 'WorkTheSweepQueue',
            actions: ['sqs:ReceiveMessage', 'sqs:DeleteMessage', 'sqs:GetQueueAttributes'],
            resources: [this.sweepQueue.queueArn],
          }),
        );
      }
      const role = new iam.Role(scope, 'Role', {
        description: `skewguard ${crate}`,
        assumedBy: new iam.ServicePrincipal('lambda.amazonaws.com'),
        managedPolicies: [
          describeRevisions, pinRules, ledgerWrite,
          // post-shift starts retention copies and tears down one not healthy in time; the
          // reconciler retires them.
          ...(crate === 'post-shift' ? [retentionStart] : []),
          ...(crate === 'post-shift' || crate === 'reconciler' ? [retentionTeardown] : []),
        ],
        inlinePolicies: { [crate]: new iam.PolicyDocument({ statements: own }) },
      });
      const code = props.code?.[crate] ?? lambda.Code.fromAsset(path.join(
        props.lambdaBuildDir ?? (() => { throw new Error(`Skewguard: give lambdaBuildDir or code['${crate}']`); })(),
        crate,
      ));
      const fn = new lambda.Function(scope, 'Function', {
        functionName: `${name}-${crate}`,
        description: spec.description,
        runtime: lambda.Runtime.PROVIDED_AL2023,
        handler: 'bootstrap',
        architecture: props.architecture ?? lambda.Architecture.ARM_64,
        memorySize: 256,
        timeout: Duration.seconds(spec.timeout),
        code,
        role,
        logGroup,
        loggingFormat: lambda.LoggingFormat.JSON,
        applicationLogLevelV2: props.logLevel ?? lambda.ApplicationLogLevel.INFO,
        environment: {
          SKEWGUARD_TABLE: this.table.tableName,
          SKEWGUARD_SKEW_WINDOW: this.skewWindow,
          ...(crate === 'reconciler' ? { SKEWGUARD_SWEEP_QUEUE_URL: this.sweepQueue.queueUrl } : {}),
        },
      });
      skip(fn, {
        CKV_AWS_117: 'Calls only AWS APIs, no VPC resources: a VPC would add NAT or endpoints and nothing else',
        CKV_AWS_115: 'A few invocations per deployment; reserved concurrency takes from the account pool, and a throttled hook fails a deployment',
        CKV_AWS_173: 'The environment holds a table name and a duration, no secret',
        ...(crate === 'reconciler' ? {} : { CKV_AWS_116: 'ECS invokes the hook synchronously and gets its errors: there is no asynchronous event to lose' }),
      });
      skip(logGroup, { CKV_AWS_158: 'Operational logs without secrets, encrypted at rest by CloudWatch Logs; a CMK would need a key policy per account' });
      functions[crate] = fn;
      roles[crate] = role;
    }
    this.functions = functions;
    this.roles = roles;

    // -------------------------------------------------------------------------- the reconciler
    const reconciler = functions.reconciler;
    // Set on the resource, not through `deadLetterQueue`, which would add its own grant: the
    // role's statements stay exactly the template's.
    (reconciler.node.defaultChild as lambda.CfnFunction).deadLetterConfig = { targetArn: this.deadLetterQueue.queueArn };
    reconciler.configureAsyncInvoke({ retryAttempts: 2, maxEventAge: Duration.hours(1) });
    new events.Rule(this, 'DeploymentFinished', {
      description: 'skewguard: reconcile a service when its ECS deployment completes or fails',
      eventPattern: {
        source: ['aws.ecs'],
        detailType: ['ECS Deployment State Change'],
        // Only the services of clusterName, the same scope as the roles' ECS calls.
        resources: events.Match.wildcard(`${ecsPrefix}:service/${clusterName}/*`),
        detail: { eventName: ['SERVICE_DEPLOYMENT_COMPLETED', 'SERVICE_DEPLOYMENT_FAILED'] },
      },
      targets: [new targets.LambdaFunction(reconciler, { retryAttempts: 4, maxEventAge: Duration.hours(1) })],
    });
    new events.Rule(this, 'Periodic', {
      description: 'skewguard periodic reconciliation (enqueues one message per service)',
      schedule: props.reconcileSchedule ?? events.Schedule.rate(Duration.minutes(5)),
      targets: [new targets.LambdaFunction(reconciler)],
    });
    // Each invocation reconciles up to 10 services and answers the ones that failed
    // (batchItemFailures), so only those are retried. Not `SqsEventSource`, which would add its
    // own grant: the role's statements stay exactly the template's.
    const sweepConcurrency = props.sweepConcurrency ?? 5;
    if (!Token.isUnresolved(sweepConcurrency) && (sweepConcurrency < 2 || sweepConcurrency > 1000)) {
      throw new Error('Skewguard: sweepConcurrency must be between 2 and 1000');
    }
    reconciler.addEventSourceMapping('SweepQueue', {
      eventSourceArn: this.sweepQueue.queueArn,
      batchSize: 10,
      reportBatchItemFailures: true,
      maxConcurrency: sweepConcurrency,
    });

    // -------------------------------------------------------------------------- the role ECS assumes
    this.hookInvokeRole = new iam.Role(this, 'HookInvokeRole', {
      description: 'Assumed by Amazon ECS to invoke the skewguard lifecycle hooks',
      assumedBy: new iam.ServicePrincipal('ecs.amazonaws.com'),
      inlinePolicies: {
        'invoke-skewguard-hooks': new iam.PolicyDocument({
          statements: [new iam.PolicyStatement({
            sid: 'TheThreeHooksOnly',
            actions: ['lambda:InvokeFunction'],
            resources: (Object.keys(HOOKS) as Hook[]).map((h) => functions[h].functionArn),
          })],
        }),
      },
    });
  }

  /**
   * Registers the three hooks on a service deployed with ECS native blue/green (or LINEAR or
   * CANARY): `deploymentStrategy` BLUE_GREEN and an `alternateTarget` on its load balancer
   * target. All three get the same `hookDetails` and a timeout that fits the skew window.
   * skewguard then owns the service's lifecycle hooks: another hook added with
   * `addLifecycleHook` is reported as an error at synthesis.
   */
  protect(service: ecs.BaseService, options: ProtectOptions = {}): void {
    const window = options.skewWindow ?? this.skewWindow;
    const timeout = SKEW_WINDOWS[window];
    if (timeout === undefined) throw new Error(`skewguard.protect: skewWindow ${window} is not one of ${Object.keys(SKEW_WINDOWS).join(', ')}`);
    const details = { ...options.hookDetails, skewWindow: window };
    const cfn = service.node.defaultChild as ecs.CfnService;
    const stack = Stack.of(service);
    service.node.addValidation({
      validate: () => {
        const errors: string[] = [];
        const config = stack.resolve(cfn.deploymentConfiguration) ?? {};
        const controller = stack.resolve(cfn.deploymentController);
        if (controller && controller.type !== 'ECS') errors.push(`skewguard.protect: ${service.node.path} must use the ECS deployment controller, not ${controller.type}`);
        if (!['BLUE_GREEN', 'LINEAR', 'CANARY'].includes(config.strategy)) {
          errors.push(`skewguard.protect: ${service.node.path} must deploy with deploymentStrategy BLUE_GREEN (or LINEAR/CANARY), not ${config.strategy ?? 'ROLLING'}`);
        }
        if ((config.lifecycleHooks ?? []).length > 0) {
          errors.push(`skewguard.protect: ${service.node.path} has lifecycle hooks of its own; skewguard registers the service's hooks`);
        }
        return errors;
      },
    });
    cfn.addPropertyOverride('DeploymentConfiguration.LifecycleHooks', (Object.keys(HOOKS) as Hook[]).map((hook) => ({
      HookTargetArn: this.functions[hook].functionArn,
      RoleArn: this.hookInvokeRole.roleArn,
      LifecycleStages: [...HOOKS[hook]],
      HookDetails: details,
      TimeoutConfiguration: { TimeoutInMinutes: timeout, Action: options.timeoutAction ?? 'ROLLBACK' },
    })));
  }
}
