// Example: a frontend on S3 + CloudFront and its backend, a Fargate service with ECS native
// blue/green behind an ALB, protected by skewguard. One origin: /v2/* goes to the load balancer
// with the pin header forwarded and in the cache key; everything else comes from the bucket, and
// only the hashed assets (/assets/*) are cached, so index.html always names the newest build.
import {
  CfnOutput, Duration, RemovalPolicy, Stack, type StackProps,
  aws_cloudfront as cloudfront, aws_cloudfront_origins as origins, aws_ec2 as ec2, aws_ecs as ecs,
  aws_elasticloadbalancingv2 as elbv2, aws_logs as logs, aws_s3 as s3,
} from 'aws-cdk-lib';
import type { Construct } from 'constructs';
import { Skewguard, skip, type SkewguardProps } from './index';

export const PIN_HEADER = 'X-Deployment-ID';

export interface ExampleStackProps extends StackProps {
  /** Backend image, built for arm64. */
  readonly image: string;
  /** This build's deployment ID (usually the git SHA): a new value is a new blue/green deployment. */
  readonly deploymentId: string;
  /** How skewguard's functions get their code (lambdaBuildDir or code). */
  readonly skewguardCode: Pick<SkewguardProps, 'lambdaBuildDir' | 'code'>;
}

export class ExampleStack extends Stack {
  readonly skewguard: Skewguard;
  readonly service: ecs.FargateService;

  constructor(scope: Construct, id: string, props: ExampleStackProps) {
    super(scope, id, props);

    const vpc = new ec2.Vpc(this, 'Vpc', { maxAzs: 2, natGateways: 1 });

    // ------------------------------------------------------------------------ load balancer
    const alb = new elbv2.ApplicationLoadBalancer(this, 'Alb', {
      vpc,
      internetFacing: true,
      dropInvalidHeaderFields: true,
    });
    const targetGroup = (name: string) => new elbv2.ApplicationTargetGroup(this, name, {
      vpc,
      targetType: elbv2.TargetType.IP,
      protocol: elbv2.ApplicationProtocol.HTTP,
      port: 8080,
      deregistrationDelay: Duration.seconds(30),
      healthCheck: { path: '/healthz', interval: Duration.seconds(10), healthyThresholdCount: 2 },
    });
    const blue = targetGroup('Blue');
    const green = targetGroup('Green');
    const listener = alb.addListener('Http', {
      port: 80,
      defaultAction: elbv2.ListenerAction.forward([blue]),
    });
    // ECS shifts traffic by rewriting these rules' weights. CDK has no ignore_changes: leave both
    // rules unchanged after the first deployment (any change makes CloudFormation put these
    // weights back). Pins go in the free priorities between them; skewguard creates those rules,
    // this app must never own them.
    const weighted = elbv2.ListenerAction.weightedForward([
      { targetGroup: blue, weight: 100 },
      { targetGroup: green, weight: 0 },
    ]);
    const production = new elbv2.ApplicationListenerRule(this, 'ProductionRule', {
      listener,
      priority: 1000,
      conditions: [elbv2.ListenerCondition.pathPatterns(['/*'])],
      action: weighted,
    });
    const test = new elbv2.ApplicationListenerRule(this, 'TestRule', {
      listener,
      priority: 10,
      conditions: [elbv2.ListenerCondition.httpHeader('X-Skewguard-Test', ['true'])],
      action: weighted,
    });

    // ------------------------------------------------------------------------ skewguard
    this.skewguard = new Skewguard(this, 'Skewguard', {
      listenerArns: [listener.listenerArn],
      clusterName: 'skewguard-example',
      ...props.skewguardCode,
    });

    // ------------------------------------------------------------------------ the backend
    const cluster = new ecs.Cluster(this, 'Cluster', { vpc, clusterName: 'skewguard-example', containerInsightsV2: ecs.ContainerInsights.ENABLED });
    const taskDefinition = new ecs.FargateTaskDefinition(this, 'Task', {
      cpu: 256,
      memoryLimitMiB: 512,
      runtimePlatform: { cpuArchitecture: ecs.CpuArchitecture.ARM64, operatingSystemFamily: ecs.OperatingSystemFamily.LINUX },
    });
    const appLogs = new logs.LogGroup(this, 'AppLogs', { retention: logs.RetentionDays.ONE_MONTH, removalPolicy: RemovalPolicy.DESTROY });
    taskDefinition.addContainer('app', {
      image: ecs.ContainerImage.fromRegistry(props.image),
      readonlyRootFilesystem: true,
      portMappings: [{ containerPort: 8080 }],
      environment: { DEPLOYMENT_ID: props.deploymentId, PORT: '8080' },
      logging: ecs.LogDrivers.awsLogs({
        streamPrefix: 'app',
        logGroup: appLogs,
      }),
    });
    this.service = new ecs.FargateService(this, 'Service', {
      cluster,
      taskDefinition,
      desiredCount: 2,
      minHealthyPercent: 100,
      circuitBreaker: { rollback: true },
      healthCheckGracePeriod: Duration.seconds(30),
      deploymentStrategy: ecs.DeploymentStrategy.BLUE_GREEN,
      bakeTime: Duration.minutes(5),
    });
    const target = this.service.loadBalancerTarget({
      containerName: 'app',
      containerPort: 8080,
      alternateTarget: new ecs.AlternateTarget('Green', {
        alternateTargetGroup: green,
        productionListener: ecs.ListenerRuleConfiguration.applicationListenerRule(production),
        testListener: ecs.ListenerRuleConfiguration.applicationListenerRule(test),
      }),
    });
    target.attachToApplicationTargetGroup(blue);
    this.service.connections.allowFrom(alb, ec2.Port.tcp(8080), 'from the ALB');
    this.skewguard.protect(this.service);

    // ------------------------------------------------------------------------ the frontend
    const bucket = new s3.Bucket(this, 'Frontend', {
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
      encryption: s3.BucketEncryption.S3_MANAGED,
      enforceSSL: true,
      versioned: true,
    });
    const apiCache = new cloudfront.CachePolicy(this, 'ApiCache', {
      comment: `API answers cached per ${PIN_HEADER}: one version's answer never serves another`,
      headerBehavior: cloudfront.CacheHeaderBehavior.allowList(PIN_HEADER),
      queryStringBehavior: cloudfront.CacheQueryStringBehavior.all(),
      cookieBehavior: cloudfront.CacheCookieBehavior.none(),
      defaultTtl: Duration.seconds(0),
      minTtl: Duration.seconds(0),
      maxTtl: Duration.minutes(5),
    });
    const apiRequests = new cloudfront.OriginRequestPolicy(this, 'ApiRequests', {
      comment: `Forward the pin header ${PIN_HEADER} (and the test header) to the load balancer`,
      headerBehavior: cloudfront.OriginRequestHeaderBehavior.allowList(PIN_HEADER, 'X-Skewguard-Test'),
      queryStringBehavior: cloudfront.OriginRequestQueryStringBehavior.all(),
      cookieBehavior: cloudfront.OriginRequestCookieBehavior.all(),
    });
    const site = origins.S3BucketOrigin.withOriginAccessControl(bucket);
    const distribution = new cloudfront.Distribution(this, 'Cdn', {
      defaultRootObject: 'index.html',
      // index.html and every unhashed file: never cached, so a reload gets the newest build.
      defaultBehavior: {
        origin: site,
        viewerProtocolPolicy: cloudfront.ViewerProtocolPolicy.REDIRECT_TO_HTTPS,
        cachePolicy: cloudfront.CachePolicy.CACHING_DISABLED,
      },
      additionalBehaviors: {
        // Hashed build assets: immutable, cached; keep old builds' assets when publishing.
        '/assets/*': {
          origin: site,
          viewerProtocolPolicy: cloudfront.ViewerProtocolPolicy.REDIRECT_TO_HTTPS,
          cachePolicy: cloudfront.CachePolicy.CACHING_OPTIMIZED,
        },
        '/v2/*': {
          origin: new origins.LoadBalancerV2Origin(alb, { protocolPolicy: cloudfront.OriginProtocolPolicy.HTTP_ONLY }),
          viewerProtocolPolicy: cloudfront.ViewerProtocolPolicy.REDIRECT_TO_HTTPS,
          allowedMethods: cloudfront.AllowedMethods.ALLOW_ALL,
          cachePolicy: apiCache,
          originRequestPolicy: apiRequests,
        },
      },
    });

    skip(alb, { CKV_AWS_91: 'Example: access logs need a log bucket; add one in production' });
    skip(listener, {
      CKV_AWS_2: 'Example: CloudFront terminates HTTPS; the ALB origin speaks HTTP (a certificate of the user would allow HTTPS_ONLY)',
      CKV_AWS_103: 'Example: an HTTP listener has no TLS policy',
    });
    skip(alb.connections.securityGroups[0], { CKV_AWS_260: 'Example: CloudFront reaches the ALB on port 80 (restrict it to the CloudFront prefix list in production)' });
    skip(distribution, {
      CKV_AWS_174: 'Example: the default CloudFront certificate; a custom domain brings TLSv1.2_2021',
      CKV_AWS_68: 'Example: a WAF web ACL is the user\'s choice and costs money',
      CKV_AWS_86: 'Example: access logs need a log bucket; add one in production',
    });
    skip(bucket, { CKV_AWS_18: 'Example: access logs need a log bucket; add one in production' });
    skip(appLogs, { CKV_AWS_158: "Example: the app's logs, encrypted at rest by CloudWatch Logs" });

    new CfnOutput(this, 'Url', { value: `https://${distribution.distributionDomainName}` });
    new CfnOutput(this, 'FrontendBucket', { value: bucket.bucketName });
    new CfnOutput(this, 'ServiceArn', { value: this.service.serviceArn });
    new CfnOutput(this, 'LedgerTable', { value: this.skewguard.table.tableName });
  }
}

