//! CloudWatch in the local world: the stand-in answers aws-sdk-cloudwatch (RPC v2 CBOR), the data
//! plane publishes the ALB's `RequestCount` per target group for the requests it served, a
//! weighted pin rule splits traffic by weight (0 gets none), and the world's clock makes "idle
//! for 30 minutes" observable at once.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_cloudwatch::error::ProvideErrorMetadata;
use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{
    Dimension, Metric, MetricDataQuery, MetricDatum, MetricStat, StandardUnit, Statistic,
};
use aws_sdk_ecs::types::{LaunchType, LoadBalancer};
use aws_sdk_elasticloadbalancingv2::types::TargetHealthStateEnum;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use skewguard_world::aws::{Clients, Endpoints};
use skewguard_world::clock::WorldClock;
use skewguard_world::cloudwatch::CloudWatchStandIn;
use skewguard_world::data_plane::{
    DataPlane, TARGET_GROUP_HEADER, load_balancer_dimension, target_group_dimension,
};
use skewguard_world::fixtures::{create_target_group, header_condition, weighted_forward};
use skewguard_world::live::CheckoutTasks;
use skewguard_world::world::{CLUSTER, World};

const NOWHERE: &str = "http://127.0.0.1:9";

fn dims(tg: &str, lb: &str) -> Vec<Dimension> {
    vec![
        Dimension::builder().name("TargetGroup").value(tg).build(),
        Dimension::builder().name("LoadBalancer").value(lb).build(),
    ]
}

fn query(id: &str, dimensions: Vec<Dimension>, stat: &str) -> MetricDataQuery {
    MetricDataQuery::builder()
        .id(id)
        .metric_stat(
            MetricStat::builder()
                .metric(
                    Metric::builder()
                        .namespace("AWS/ApplicationELB")
                        .metric_name("RequestCount")
                        .set_dimensions(Some(dimensions))
                        .build(),
                )
                .period(60)
                .stat(stat)
                .build(),
        )
        .build()
}

/// Sum of `RequestCount` for the dimensions over `[now - window, now + 1 min)` (the caller's
/// clock), with the number of datapoints it came from.
async fn request_count(
    cloudwatch: &aws_sdk_cloudwatch::Client,
    dimensions: Vec<Dimension>,
    window: Duration,
) -> (f64, usize) {
    let now = SystemTime::now();
    let answer = cloudwatch
        .get_metric_data()
        .start_time(DateTime::from(now - window))
        .end_time(DateTime::from(now + Duration::from_secs(60)))
        .metric_data_queries(query("requests", dimensions, "Sum"))
        .send()
        .await
        .unwrap();
    let result = &answer.metric_data_results()[0];
    assert_eq!(result.timestamps().len(), result.values().len());
    (result.values().iter().sum(), result.values().len())
}

#[tokio::test]
async fn the_stand_in_answers_put_and_get_metric_data_through_the_sdk() {
    let clock = WorldClock::real();
    let stand_in = CloudWatchStandIn::start(clock.clone()).await.unwrap();
    let clients =
        Clients::new(&Endpoints::new(NOWHERE, NOWHERE).with_cloudwatch(stand_in.endpoint())).await;
    let cw = clients.cloudwatch;
    let (tg, lb) = (
        "targetgroup/web-tg1/0123456789abcdef",
        "app/web/fedcba9876543210",
    );
    // Minutes counted back from the current one, fixed once (a minute may turn meanwhile).
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let minute = |m: i64| DateTime::from_secs(now - now % 60 - 60 * m);
    let datum = |value: f64, at: DateTime| {
        MetricDatum::builder()
            .metric_name("RequestCount")
            .set_dimensions(Some(dims(tg, lb)))
            .timestamp(at)
            .value(value)
            .unit(StandardUnit::Count)
            .build()
    };
    cw.put_metric_data()
        .namespace("AWS/ApplicationELB")
        .metric_data(datum(3.0, minute(2)))
        .metric_data(datum(4.0, minute(2)))
        .metric_data(datum(5.0, minute(1)))
        .send()
        .await
        .unwrap();

    let (sum, points) = request_count(&cw, dims(tg, lb), Duration::from_secs(600)).await;
    assert_eq!((sum, points), (12.0, 2), "two minutes: 3+4 and 5");
    // Newest first, each period's sum, timestamps at the periods' starts.
    let answer = cw
        .get_metric_data()
        .start_time(minute(10))
        .end_time(minute(-1))
        .metric_data_queries(query("a", dims(tg, lb), "Sum"))
        .metric_data_queries(query("b", dims(tg, lb), "SampleCount"))
        .send()
        .await
        .unwrap();
    let sums = &answer.metric_data_results()[0];
    assert_eq!(sums.values(), [5.0, 7.0]);
    assert_eq!(sums.timestamps(), [minute(1), minute(2)]);
    assert_eq!(sums.label(), Some("RequestCount"));
    assert_eq!(answer.metric_data_results()[1].values(), [1.0, 2.0]);

    // A metric is its exact set of dimensions: the target group alone matches nothing.
    let (sum, points) = request_count(
        &cw,
        vec![Dimension::builder().name("TargetGroup").value(tg).build()],
        Duration::from_secs(600),
    )
    .await;
    assert_eq!((sum, points), (0.0, 0));
    // A window without data has no datapoint at all (not a 0).
    let old = cw
        .get_metric_data()
        .start_time(minute(60))
        .end_time(minute(30))
        .metric_data_queries(query("a", dims(tg, lb), "Sum"))
        .send()
        .await
        .unwrap();
    assert!(old.metric_data_results()[0].values().is_empty());

    // GetMetricStatistics agrees.
    let stats = cw
        .get_metric_statistics()
        .namespace("AWS/ApplicationELB")
        .metric_name("RequestCount")
        .set_dimensions(Some(dims(tg, lb)))
        .start_time(minute(10))
        .end_time(minute(-1))
        .period(60)
        .statistics(Statistic::Sum)
        .statistics(Statistic::Maximum)
        .send()
        .await
        .unwrap();
    let mut sums: Vec<(f64, f64)> = stats
        .datapoints()
        .iter()
        .map(|d| (d.sum().unwrap(), d.maximum().unwrap()))
        .collect();
    sums.sort_by(|a, b| a.partial_cmp(b).unwrap());
    assert_eq!(sums, [(5.0, 5.0), (7.0, 4.0)]);

    // What the stand-in does not model says so, in CloudWatch's error shape.
    let err = cw
        .get_metric_data()
        .start_time(minute(10))
        .end_time(minute(-1))
        .metric_data_queries(
            MetricDataQuery::builder()
                .id("m")
                .expression("SUM(METRICS())")
                .build(),
        )
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("InvalidParameterValue"), "{err:?}");
    let err = cw
        .get_metric_data()
        .start_time(minute(-1))
        .end_time(minute(10))
        .metric_data_queries(query("a", dims(tg, lb), "Sum"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("InvalidParameterValue"), "{err:?}");
}

async fn get(
    http: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    url: &str,
    pin: &str,
) -> (u16, String) {
    let request = hyper::Request::get(url)
        .header("x-deployment-id", pin)
        .body(Empty::new())
        .unwrap();
    let response = http.request(request).await.unwrap();
    let status = response.status().as_u16();
    let tg = response
        .headers()
        .get(TARGET_GROUP_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let _ = response.into_body().collect().await;
    (status, tg)
}

/// Needs `cargo build -p checkout` first (as every test of the example backend does).
#[tokio::test(flavor = "multi_thread")]
async fn a_pin_moved_to_a_retention_service_counts_its_requests_and_then_shows_idle() {
    let world = World::start_with(
        |clients| {
            Arc::new(skewguard_world::engine::InProcess {
                clients,
                defaults: Default::default(),
            })
        },
        Arc::new(CheckoutTasks),
    )
    .await;
    let (elb, ecs) = (world.clients.elbv2.clone(), world.clients.ecs.clone());
    let (service, _) = world
        .service(
            "web",
            "v1",
            serde_json::json!({"retention": "hold", "skewWindow": "1h"}),
        )
        .await;
    let blue_td = world
        .ecs
        .service(&service)
        .unwrap()
        .task_definition
        .unwrap();

    // Blue's pin rule, then the retention target group beside it at weight 0.
    let retention_tg = create_target_group(&elb, &world.vpc, "web-v1-ret")
        .await
        .unwrap();
    let pin = elb
        .create_rule()
        .listener_arn(&world.alb.listener_arn)
        .priority(5)
        .conditions(header_condition("X-Deployment-ID", "v1"))
        .actions(weighted_forward(&[(&world.alb.blue_tg, 1)]))
        .send()
        .await
        .unwrap()
        .rules()[0]
        .rule_arn()
        .unwrap()
        .to_owned();
    elb.modify_rule()
        .rule_arn(&pin)
        .actions(weighted_forward(&[
            (&world.alb.blue_tg, 1),
            (&retention_tg, 0),
        ]))
        .send()
        .await
        .unwrap();
    ecs.create_service()
        .cluster(CLUSTER)
        .service_name("web-v1-retained")
        .task_definition(&blue_td)
        .desired_count(2)
        .launch_type(LaunchType::Fargate)
        .load_balancers(
            LoadBalancer::builder()
                .target_group_arn(&retention_tg)
                .container_name("web")
                .container_port(8080)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let health = elb
            .describe_target_health()
            .target_group_arn(&retention_tg)
            .send()
            .await
            .unwrap();
        let healthy = health
            .target_health_descriptions()
            .iter()
            .filter(|d| {
                d.target_health().and_then(|h| h.state()) == Some(&TargetHealthStateEnum::Healthy)
            })
            .count();
        if healthy == 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention tasks never healthy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let plane = DataPlane::start(elb.clone(), world.alb.listener_arn.clone())
        .await
        .unwrap();
    plane.publish_metrics(world.clients.cloudwatch.clone(), world.clock.clone());
    let http = Client::builder(TokioExecutor::new()).build_http();
    let url = format!("{}/api/cart", plane.url());

    // Weight 1 on blue, 0 on the retention group: every pinned request reaches blue.
    for _ in 0..10 {
        let (_, tg) = get(&http, &url, "v1").await;
        assert_eq!(tg, world.alb.blue_tg);
    }
    // The weights shifted: every pinned request reaches the retention service.
    elb.modify_rule()
        .rule_arn(&pin)
        .actions(weighted_forward(&[
            (&world.alb.blue_tg, 0),
            (&retention_tg, 1),
        ]))
        .send()
        .await
        .unwrap();
    plane.invalidate();
    for _ in 0..6 {
        let (status, tg) = get(&http, &url, "v1").await;
        assert_eq!(
            (status, tg.as_str()),
            (404, retention_tg.as_str()),
            "checkout has no /api/cart: its own 404 still counts as served"
        );
    }
    plane.flush_metrics().await.unwrap();

    let lb = load_balancer_dimension(&world.alb.load_balancer_arn).unwrap();
    assert!(lb.starts_with("app/web/"), "{lb}");
    let blue_dims = dims(&target_group_dimension(&world.alb.blue_tg).unwrap(), &lb);
    let retention_dims = dims(&target_group_dimension(&retention_tg).unwrap(), &lb);
    assert!(
        retention_dims[0]
            .value()
            .unwrap()
            .starts_with("targetgroup/web-v1-ret/")
    );
    let cw = &world.clients.cloudwatch;
    let hour = Duration::from_secs(3600);
    assert_eq!(request_count(cw, blue_dims.clone(), hour).await.0, 10.0);
    assert_eq!(request_count(cw, retention_dims.clone(), hour).await.0, 6.0);

    // 31 minutes pass in the world: the last 30 minutes hold no request for either group
    // (no datapoint at all, as CloudWatch shows an idle ALB target group), the last hour
    // still does.
    world.clock.advance(Duration::from_secs(31 * 60));
    let half_hour = Duration::from_secs(30 * 60);
    assert_eq!(
        request_count(cw, retention_dims.clone(), half_hour).await,
        (0.0, 0)
    );
    assert_eq!(
        request_count(cw, blue_dims.clone(), half_hour).await,
        (0.0, 0)
    );
    assert_eq!(request_count(cw, retention_dims.clone(), hour).await.0, 6.0);

    // Traffic now is stamped with world time: it shows in the last 30 minutes.
    get(&http, &url, "v1").await;
    plane.flush_metrics().await.unwrap();
    assert_eq!(request_count(cw, retention_dims, half_hour).await, (1.0, 1));
    // "Always reported" while the load balancer carries requests: the production group, which
    // served none of it, has a datapoint of 0 in that minute (a measured zero, not unknown).
    assert_eq!(request_count(cw, blue_dims, half_hour).await, (0.0, 1));
}
