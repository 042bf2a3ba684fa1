"""The LLM-calling application on ECS Fargate: cluster, task, service, autoscaling.

Creates: an ECS cluster (Container Insights on) with FARGATE and FARGATE_SPOT; a task definition
(read-only root file system, non-root user, health check, secrets injected from Secrets Manager by
ARN, logs to an encrypted log group); execution and task roles scoped to exact ARNs (the image's
ECR repository, when given, is the only one it may pull from); the tasks' security group (in from
the load balancer only; out to 443 and to the cache); the service in private subnets behind the
target group, with a rollback circuit breaker; target-tracking autoscaling on CPU, memory and
requests per target.

Cost: Fargate ARM64 about $0.0324/vCPU-hour and $0.0036/GB-hour (x86 about 25 % more; Spot up to
70 % less): a 0.5 vCPU / 1 GB task runs about $14/month. Container Insights and logs by volume.

While autoscaling is on, `desired_count` is left to the autoscaler (ignored by updates); turn it
off and the count comes from args again.

Args (`ServiceArgs`, each described where it is declared below):
    name: str, required
    region: str, required
    vpc_id: pulumi.Input[str], required
    subnet_ids: list[pulumi.Input[str]], required
    image: pulumi.Input[str], required
    lb_security_group_id: pulumi.Input[str], required
    target_group_arn: pulumi.Input[str], required
    request_count_label: pulumi.Input[str], required
    kms_key_arn: pulumi.Input[str], required
    cpu: int = 512
    memory: int = 1024
    architecture: Literal['ARM64', 'X86_64'] = 'ARM64'
    container_port: int = 8080
    user: str = '1000:1000'
    health_check_path: str = '/healthz'
    health_check_command: Union[str, list[str]] = ''
    environment: Mapping[str, pulumi.Input[str]] = {}
    secrets: Mapping[str, pulumi.Input[str]] = {}
    cache: Optional[CacheLink] = None
    min_tasks: int = 1
    max_tasks: int = 4
    desired_tasks: int = 1
    autoscaling: bool = True
    cpu_target: int = 60
    memory_target: int = 70
    requests_per_target: int = 50
    scale_out_cooldown: int = 60
    scale_in_cooldown: int = 300
    fargate_base: int = 0
    fargate_weight: int = 1
    spot_weight: int = 0
    health_check_grace_seconds: int = 60
    stop_timeout_seconds: int = 120
    log_retention_days: int = 30
    execute_command: bool = False
    container_insights: Literal['enabled', 'enhanced'] = 'enabled'
    repository_arn: Optional[pulumi.Input[str]] = None
    task_role_statements: list[dict[str, Any]] = []
    iam_path: str = '/'
    wait_for: list[pulumi.Resource] = []
    protect: bool = False
    cluster_tags: Mapping[str, str] = {}

`CacheLink`:
    security_group_id: pulumi.Input[str], required
    port: int, required

Outputs: cluster_name, service_name, security_group_id, log_group_name.

Example (examples/service/, runs as written beside a copy of this file):

    import pulumi
    from service import Service, ServiceArgs

    svc = Service("service", ServiceArgs(
        name="my-app", region="eu-west-1", vpc_id="vpc-0123456789abcdef0",
        subnet_ids=["subnet-0ccccccccccccccc0", "subnet-0dddddddddddddddd"],
        image="111122223333.dkr.ecr.eu-west-1.amazonaws.com/my-app@sha256:" + "0" * 64,
        lb_security_group_id="sg-0123456789abcdef0",
        target_group_arn="arn:aws:elasticloadbalancing:eu-west-1:111122223333:targetgroup/my-app/0123456789abcdef",
        request_count_label="app/my-alb/0123456789abcdef/targetgroup/my-app/0123456789abcdef",
        kms_key_arn="arn:aws:kms:eu-west-1:111122223333:key/0a1b2c3d-4e5f-6789-abcd-ef0123456789"))
    pulumi.export("serviceName", svc.service_name)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

import pulumi
import pulumi_aws as aws

# Fargate's task sizes: cpu units -> the memory (MiB) each accepts. Source: the ECS developer
# guide, "Task CPU and memory" for Fargate on Linux.
FARGATE_SIZES: dict[int, list[int]] = {
    256: [512, 1024, 2048],
    512: list(range(1024, 4096 + 1, 1024)),
    1024: list(range(2048, 8192 + 1, 1024)),
    2048: list(range(4096, 16384 + 1, 1024)),
    4096: list(range(8192, 30720 + 1, 1024)),
    8192: list(range(16384, 61440 + 1, 4096)),
    16384: list(range(32768, 122880 + 1, 8192)),
}

# Where GuardDuty Runtime Monitoring's agent sidecar comes from, per region (GuardDuty user
# guide, "Amazon ECR repository hosting GuardDuty agent" for Fargate): in an account with
# automated agent configuration, ECS adds it to every task and pulls it with the task's
# execution role; without this right the task runs unmonitored, with no error.
GUARDDUTY_AGENT_ACCOUNTS = {
    "us-east-1": "593207742271", "us-east-2": "307168627858", "us-west-1": "684579721401",
    "us-west-2": "733349766148", "ca-central-1": "354763396469", "ca-west-1": "339712888787",
    "mx-central-1": "311141559934", "sa-east-1": "758426053663", "eu-west-1": "694911143906",
    "eu-west-2": "892757235363", "eu-west-3": "665651866788", "eu-central-1": "323658145986",
    "eu-central-2": "529164026651", "eu-north-1": "591436053604", "eu-south-1": "266869475730",
    "eu-south-2": "919611009337", "me-central-1": "000014521398", "me-south-1": "536382113932",
    "il-central-1": "870907303882", "af-south-1": "197869348890", "ap-south-1": "251508486986",
    "ap-south-2": "950823858135", "ap-southeast-1": "174946120834", "ap-southeast-2": "005257825471",
    "ap-southeast-3": "510637619217", "ap-southeast-4": "251357961535", "ap-southeast-5": "156041399949",
    "ap-southeast-7": "054037130133", "ap-northeast-1": "533107202818", "ap-northeast-2": "914738172881",
    "ap-northeast-3": "273192626886", "ap-east-1": "258348409381", "ap-east-2": "259886477082",
    "us-gov-east-1": "383115532789", "us-gov-west-1": "383110348953",
}
GUARDDUTY_AGENT_REPOSITORY = "aws-guardduty-agent-fargate"


def guardduty_agent_repository(region: str) -> Optional[str]:
    """The ARN of the repository GuardDuty's Fargate agent is pulled from in this region."""
    account = GUARDDUTY_AGENT_ACCOUNTS.get(region)
    partition = "aws-us-gov" if region.startswith("us-gov-") else "aws"
    return f"arn:{partition}:ecr:{region}:{account}:repository/{GUARDDUTY_AGENT_REPOSITORY}" if account else None


TMP_VOLUME = "tmp"
# ECS Exec's managed SSM agent writes under these paths; with a read-only root file system it
# crashes unless each is a writable volume (aws/containers-roadmap#1359,
# aws-containers/amazon-ecs-exec-checker#21 and #71). Mounted only while execute_command is on.
EXEC_AGENT_PATHS = {
    "exec-managed-agents": "/managed-agents",
    "exec-ssm-lib": "/var/lib/amazon/ssm",
    "exec-ssm-log": "/var/log/amazon/ssm",
}


@dataclass
class CacheLink:
    """How the tasks reach the cache: its security group and port."""

    security_group_id: pulumi.Input[str]
    """The cache's security group: the tasks are let in."""
    port: int
    """The cache's port."""


def problems(a: ServiceArgs) -> list[tuple[str, str]]:
    """What ECS would refuse in these arguments, or what would make the service flap, as
    (argument, why); [] when none. Works on any object with ServiceArgs's field names."""
    found = []
    if a.cpu not in FARGATE_SIZES:
        found.append(("cpu", f"Fargate accepts cpu {sorted(FARGATE_SIZES)}"))
    elif a.memory not in FARGATE_SIZES[a.cpu]:
        ok = FARGATE_SIZES[a.cpu]
        found.append(("memory", f"with cpu {a.cpu} Fargate accepts memory {ok[0]}..{ok[-1]} MiB in steps "
                                f"of {ok[1] - ok[0]}: {ok}"))
    if a.min_tasks > a.max_tasks:
        found.append(("min_tasks", f"must be <= `max_tasks` ({a.max_tasks})"))
    elif not a.min_tasks <= a.desired_tasks <= a.max_tasks:
        found.append(("desired_tasks", f"must lie between `min_tasks` ({a.min_tasks}) and `max_tasks` "
                                       f"({a.max_tasks})"))
    if a.fargate_weight + a.spot_weight == 0:
        found.append(("fargate_weight", "`fargate_weight` + `spot_weight` must be at least 1"))
    if not 2 <= a.stop_timeout_seconds <= 120:
        found.append(("stop_timeout_seconds", "Fargate allows 2 to 120 seconds"))
    if str(a.user).split(":")[0] in ("0", "root", ""):
        found.append(("user", "never root: a non-root uid such as 1000:1000"))
    # Valid alone, wrong together: a task scaled out is still in its grace period (its failing
    # checks ignored, its CPU near idle and pulling the average down) when a shorter scale-in
    # cooldown lets target tracking remove capacity again: the service flaps.
    if a.autoscaling and a.scale_in_cooldown < a.health_check_grace_seconds:
        grace = a.health_check_grace_seconds
        found.append(("scale_in_cooldown", f"at least `health_check_grace_seconds` ({grace}): a new task must "
                                           "pass its grace period before scaling in may remove tasks again"))
    return found


@dataclass
class ServiceArgs:
    name: str
    """Cluster and service name, e.g. llm-service-staging."""
    region: str
    """The region, for the log configuration and the GuardDuty agent's repository."""
    vpc_id: pulumi.Input[str]
    """The VPC of the tasks' security group."""
    subnet_ids: list[pulumi.Input[str]]
    """The private subnets the tasks run in."""
    image: pulumi.Input[str]
    """The image to run: a reference, best by digest (repository@sha256:...)."""
    lb_security_group_id: pulumi.Input[str]
    """The load balancer's security group: the only source let in to the container port."""
    target_group_arn: pulumi.Input[str]
    """The target group the service registers its tasks in."""
    request_count_label: pulumi.Input[str]
    """The label of the ALB's requests-per-target metric: "<alb arn suffix>/<target group arn suffix>"."""
    kms_key_arn: pulumi.Input[str]
    """The KMS key of the secrets and the log group (the execution role may decrypt with it)."""
    cpu: int = 512
    """Task CPU units (1024 = one vCPU). Fargate's task sizes."""
    memory: int = 1024
    """Task memory in MiB; Fargate accepts fixed steps per cpu size."""
    architecture: Literal["ARM64", "X86_64"] = "ARM64"
    """CPU architecture of the tasks (the image must be built for it)."""
    container_port: int = 8080
    """The port the container listens on; above 1023, since it runs as a non-root user."""
    user: str = "1000:1000"
    """The user the container runs as. Never root (uid 0): the policy pack refuses it too."""
    health_check_path: str = "/healthz"
    """The path the load balancer's health check and the default container health check ask."""
    health_check_command: Union[str, list[str]] = ""
    """A shell command (CMD-SHELL) or an exec form list (CMD) run inside the container; "" runs curl against
    health_check_path, which needs curl in the image."""
    environment: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    """Plain environment variables of the container, name -> value."""
    secrets: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    """Secrets injected into the container by ARN, env name -> Secrets Manager ARN (the execution role may
    read exactly these)."""
    cache: Optional[CacheLink] = None
    """The cache the tasks reach, or None."""
    min_tasks: int = 1
    """Fewest tasks autoscaling keeps."""
    max_tasks: int = 4
    """Most tasks autoscaling starts (ECS: 5,000 tasks a service)."""
    desired_tasks: int = 1
    """Tasks at the first deploy (autoscaling owns the count afterwards)."""
    autoscaling: bool = True
    """Target tracking on CPU, memory and requests per target."""
    cpu_target: int = 60
    """Average CPU % that target tracking holds."""
    memory_target: int = 70
    """Average memory % that target tracking holds."""
    requests_per_target: int = 50
    """Requests a minute per task that target tracking holds (ALBRequestCountPerTarget)."""
    scale_out_cooldown: int = 60
    """Seconds after a scale-out before the next."""
    scale_in_cooldown: int = 300
    """Seconds after a scale-in before the next; at least health_check_grace_seconds."""
    fargate_base: int = 0
    """Tasks that always run on on-demand Fargate (ECS: base 0 to 100,000)."""
    fargate_weight: int = 1
    """Share of tasks beyond the base on on-demand Fargate (ECS: weight 0 to 1,000)."""
    spot_weight: int = 0
    """Share of tasks beyond the base on Fargate Spot (ECS: weight 0 to 1,000)."""
    health_check_grace_seconds: int = 60
    """Seconds ECS ignores failing load balancer health checks of a new task."""
    stop_timeout_seconds: int = 120
    """Seconds between SIGTERM and SIGKILL (Fargate: at most 120)."""
    log_retention_days: int = 30
    """Days the container's logs are kept."""
    execute_command: bool = False
    """ECS Exec into tasks (with the writable paths its agent needs)."""
    container_insights: Literal["enabled", "enhanced"] = "enabled"
    """Container Insights on the cluster: enabled, or enhanced (task- and container-level metrics,
    billed as more CloudWatch metrics). Never off: the alarms read its task count."""
    repository_arn: Optional[pulumi.Input[str]] = None
    """The ECR repository the tasks pull from."""
    task_role_statements: list[dict[str, Any]] = field(default_factory=list)
    """IAM statements added to the task role (the application's own rights), least privilege."""
    iam_path: str = "/"
    """The path of the task and execution roles, e.g. /llm-service/staging/, so a deploy role's IAM rights can
    be scoped to it."""
    wait_for: list[pulumi.Resource] = field(default_factory=list)
    """What the service must be created after: the listener forwarding to target_group_arn (ECS refuses a
    target group that belongs to no load balancer) and the secret values its tasks read at start-up."""
    protect: bool = False
    """The cluster and the service cannot be deleted or replaced by an `up` (the task definition is replaced
    on every image change, so it is never protected)."""
    cluster_tags: Mapping[str, str] = field(default_factory=dict)
    """Tags on the cluster alone, e.g. GuardDutyManaged: false before a destroy."""

    def __post_init__(self) -> None:
        for arg, why in problems(self):
            raise ValueError(f"ServiceArgs.{arg}: got {getattr(self, arg.split('[')[0])!r}; {why}")


def volumes(args: ServiceArgs) -> dict[str, str]:
    """The task's writable volumes, name -> path in the container (the root file system is read-only)."""
    found = {TMP_VOLUME: "/tmp"}  # noqa: S108 - the container's own scratch space
    if args.execute_command:
        found.update(EXEC_AGENT_PATHS)
    return found


class Service(pulumi.ComponentResource):
    cluster_name: pulumi.Output[str]
    """The ECS cluster's name."""
    service_name: pulumi.Output[str]
    """The ECS service's name."""
    security_group_id: pulumi.Output[str]
    """The tasks' security group."""
    log_group_name: pulumi.Output[str]
    """The log group the containers write to."""

    def __init__(self, name: str, args: ServiceArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-service:service:Service", name, None, opts)
        p = pulumi.ResourceOptions(parent=self)

        self.cluster = aws.ecs.Cluster(
            f"{name}-cluster", name=args.name,
            settings=[aws.ecs.ClusterSettingArgs(name="containerInsights", value=args.container_insights)],
            tags=dict(args.cluster_tags) or None,
            opts=pulumi.ResourceOptions(parent=self, protect=args.protect),
        )
        self.capacity = aws.ecs.ClusterCapacityProviders(
            f"{name}-capacity", cluster_name=self.cluster.name,
            capacity_providers=["FARGATE", "FARGATE_SPOT"], opts=p,
        )
        self.log_group = aws.cloudwatch.LogGroup(
            f"{name}-logs", name=f"/ecs/{args.name}", retention_in_days=args.log_retention_days,
            kms_key_id=args.kms_key_arn, opts=p,
        )
        self.security_group = self._security_groups(name, args)
        execution_role, task_role, self._secrets_policy = self._roles(name, args)
        self.task_definition = aws.ecs.TaskDefinition(
            f"{name}-task", family=args.name, cpu=str(args.cpu), memory=str(args.memory),
            network_mode="awsvpc", requires_compatibilities=["FARGATE"],
            runtime_platform=aws.ecs.TaskDefinitionRuntimePlatformArgs(
                cpu_architecture=args.architecture, operating_system_family="LINUX"
            ),
            execution_role_arn=execution_role.arn, task_role_arn=task_role.arn,
            volumes=[aws.ecs.TaskDefinitionVolumeArgs(name=v) for v in volumes(args)],
            container_definitions=pulumi.Output.all(
                args.image, self.log_group.name, dict(args.environment), dict(args.secrets)
            ).apply(lambda a: container_definitions(args, a[0], a[1], a[2], a[3])),
            opts=p,
        )
        self.service = self._service(name, args)
        if args.autoscaling:
            self._autoscaling(name, args)

        self.cluster_name = self.cluster.name
        self.service_name = self.service.name
        self.security_group_id = self.security_group.id
        self.log_group_name = self.log_group.name
        self.register_outputs({
            "cluster_name": self.cluster_name, "service_name": self.service_name,
            "security_group_id": self.security_group_id, "log_group_name": self.log_group_name,
        })

    def _security_groups(self, name: str, args: ServiceArgs) -> aws.ec2.SecurityGroup:
        """The tasks' group, and both ends of every connection the tasks take part in."""
        p = pulumi.ResourceOptions(parent=self)
        sg = aws.ec2.SecurityGroup(
            f"{name}-sg", vpc_id=args.vpc_id,
            description="LLM service tasks: in from the load balancer only", opts=p,
        )
        port = args.container_port
        aws.vpc.SecurityGroupIngressRule(
            f"{name}-in-from-alb", security_group_id=sg.id,
            referenced_security_group_id=args.lb_security_group_id,
            ip_protocol="tcp", from_port=port, to_port=port,
            description="requests from the load balancer", opts=p,
        )
        aws.vpc.SecurityGroupEgressRule(
            f"{name}-alb-out-to-tasks", security_group_id=args.lb_security_group_id,
            referenced_security_group_id=sg.id, ip_protocol="tcp", from_port=port, to_port=port,
            description="load balancer to the tasks", opts=p,
        )
        aws.vpc.SecurityGroupEgressRule(
            f"{name}-out-https", security_group_id=sg.id, cidr_ipv4="0.0.0.0/0",
            ip_protocol="tcp", from_port=443, to_port=443,
            description="the LLM API, ECR, Secrets Manager and CloudWatch over HTTPS", opts=p,
        )
        if args.cache is not None:
            cport = args.cache.port
            aws.vpc.SecurityGroupEgressRule(
                f"{name}-out-to-cache", security_group_id=sg.id,
                referenced_security_group_id=args.cache.security_group_id,
                ip_protocol="tcp", from_port=cport, to_port=cport,
                description="tasks to the cache", opts=p,
            )
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-cache-in-from-tasks", security_group_id=args.cache.security_group_id,
                referenced_security_group_id=sg.id, ip_protocol="tcp",
                from_port=cport, to_port=cport, description="from the service tasks", opts=p,
            )
        return sg

    def _roles(self, name: str, args: ServiceArgs
               ) -> tuple[aws.iam.Role, aws.iam.Role, Optional[aws.iam.RolePolicy]]:
        p = pulumi.ResourceOptions(parent=self)
        assume = json.dumps({"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": "sts:AssumeRole",
            "Principal": {"Service": "ecs-tasks.amazonaws.com"},
        }]})
        execution = aws.iam.Role(f"{name}-execution", assume_role_policy=assume, path=args.iam_path, opts=p)
        aws.iam.RolePolicy(
            f"{name}-execution-runtime", role=execution.id,
            policy=pulumi.Output.all(self.log_group.arn, args.repository_arn).apply(
                lambda a: execution_policy(a[0], a[1], args.region)),
            opts=p,
        )
        secrets_policy = None
        if args.secrets:
            secrets_policy = aws.iam.RolePolicy(
                f"{name}-execution-secrets", role=execution.id,
                policy=read_policy(list(args.secrets.values()), args.kms_key_arn, args.region),
                opts=p,
            )
        task = aws.iam.Role(f"{name}-task", assume_role_policy=assume, path=args.iam_path, opts=p)
        statements = list(args.task_role_statements)
        if args.execute_command:
            statements.append({
                "Effect": "Allow",
                "Action": ["ssmmessages:CreateControlChannel", "ssmmessages:CreateDataChannel",
                           "ssmmessages:OpenControlChannel", "ssmmessages:OpenDataChannel"],
                "Resource": "*",  # SSM session channels have no resource-level permissions
            })
        if statements:
            aws.iam.RolePolicy(
                f"{name}-task", role=task.id,
                policy=json.dumps({"Version": "2012-10-17", "Statement": statements}), opts=p,
            )
        return execution, task, secrets_policy

    def _service(self, name: str, args: ServiceArgs) -> aws.ecs.Service:
        # With autoscaling on, the autoscaler owns the task count: an update that reset
        # desired_count would undo its work. With it off, config owns the count again.
        ignore = ["desired_count"] if args.autoscaling else []
        strategies = [aws.ecs.ServiceCapacityProviderStrategyArgs(
            capacity_provider="FARGATE", base=args.fargate_base, weight=args.fargate_weight
        )]
        if args.spot_weight:
            strategies.append(aws.ecs.ServiceCapacityProviderStrategyArgs(
                capacity_provider="FARGATE_SPOT", base=0, weight=args.spot_weight
            ))
        return aws.ecs.Service(
            f"{name}-service", name=args.name, cluster=self.cluster.arn,
            task_definition=self.task_definition.arn,
            desired_count=args.min_tasks if args.autoscaling else args.desired_tasks,
            capacity_provider_strategies=strategies, platform_version="LATEST",
            network_configuration=aws.ecs.ServiceNetworkConfigurationArgs(
                subnets=args.subnet_ids, security_groups=[self.security_group.id],
                assign_public_ip=False,
            ),
            load_balancers=[aws.ecs.ServiceLoadBalancerArgs(
                target_group_arn=args.target_group_arn, container_name="app",
                container_port=args.container_port,
            )],
            deployment_circuit_breaker=aws.ecs.ServiceDeploymentCircuitBreakerArgs(
                enable=True, rollback=True
            ),
            deployment_minimum_healthy_percent=100, deployment_maximum_percent=200,
            health_check_grace_period_seconds=args.health_check_grace_seconds,
            enable_execute_command=args.execute_command, availability_zone_rebalancing="ENABLED",
            propagate_tags="SERVICE", enable_ecs_managed_tags=True,
            # The provider accepts a changed capacity-provider strategy only with a forced
            # deployment (its docstring; terraform-provider-aws#43533); any other update rolls
            # the tasks out anyway.
            force_new_deployment=True,
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=ignore, protect=args.protect,
                                        depends_on=self._create_after(args)),
        )

    def _create_after(self, args: ServiceArgs) -> list[pulumi.Resource]:
        """What must exist before the first task starts: the capacity providers its strategy
        names, the right to read its secrets (else the first tasks fail to start and the circuit
        breaker stops the rollout), and whatever the caller adds (listener, secret values)."""
        found: list[pulumi.Resource] = [self.capacity]
        if self._secrets_policy is not None:
            found.append(self._secrets_policy)
        return found + list(args.wait_for)

    def _autoscaling(self, name: str, args: ServiceArgs) -> None:
        p = pulumi.ResourceOptions(parent=self)
        target = aws.appautoscaling.Target(
            f"{name}-scaling", service_namespace="ecs", scalable_dimension="ecs:service:DesiredCount",
            resource_id=pulumi.Output.concat("service/", self.cluster.name, "/", self.service.name),
            min_capacity=args.min_tasks, max_capacity=args.max_tasks, opts=p,
        )
        signals = [
            ("cpu", "ECSServiceAverageCPUUtilization", args.cpu_target, None),
            ("memory", "ECSServiceAverageMemoryUtilization", args.memory_target, None),
            ("requests", "ALBRequestCountPerTarget", args.requests_per_target,
             args.request_count_label),
        ]
        for signal, metric, value, label in signals:
            aws.appautoscaling.Policy(
                f"{name}-scale-on-{signal}", policy_type="TargetTrackingScaling",
                service_namespace=target.service_namespace,
                scalable_dimension=target.scalable_dimension, resource_id=target.resource_id,
                target_tracking_scaling_policy_configuration=(
                    aws.appautoscaling.PolicyTargetTrackingScalingPolicyConfigurationArgs(
                        target_value=value,
                        # Out fast when load arrives, in slowly so streams are not cut short.
                        scale_out_cooldown=args.scale_out_cooldown,
                        scale_in_cooldown=args.scale_in_cooldown,
                        predefined_metric_specification=aws.appautoscaling.
                        PolicyTargetTrackingScalingPolicyConfigurationPredefinedMetricSpecificationArgs(
                            predefined_metric_type=metric, resource_label=label
                        ),
                    )
                ),
                opts=p,
            )


def health_check(args: ServiceArgs) -> list[str]:
    command = args.health_check_command
    if isinstance(command, list):
        return ["CMD", *command]
    return ["CMD-SHELL", command or
            f"curl -fsS http://localhost:{args.container_port}{args.health_check_path} || exit 1"]


def container_definitions(args: ServiceArgs, image: str, log_group: str, env: dict[str, str],
                          secrets: dict[str, str]) -> str:
    port = args.container_port
    return json.dumps([{
        "name": "app",
        "image": image,
        "essential": True,
        "user": args.user,
        "readonlyRootFilesystem": True,
        "privileged": False,
        "linuxParameters": {"initProcessEnabled": True},
        "portMappings": [{"containerPort": port, "protocol": "tcp", "name": "http"}],
        # ECS drops a variable whose value is "" and the provider then sees a change on every
        # `up` (terraform-provider-aws#39533): left out here, it reads as unset, which is "".
        "environment": [{"name": k, "value": str(v)} for k, v in sorted(env.items()) if str(v) != ""],
        # Only ARNs here: ECS fetches the values at task start, so they never sit in the
        # task definition, in Pulumi state or in the logs.
        "secrets": [{"name": k, "valueFrom": v} for k, v in sorted(secrets.items())],
        "mountPoints": [{"sourceVolume": v, "containerPath": path, "readOnly": False}
                        for v, path in volumes(args).items()],
        "healthCheck": {
            "command": health_check(args),
            "interval": 15, "timeout": 5, "retries": 3, "startPeriod": 30,
        },
        # ECS waits this long after SIGTERM before SIGKILL, so open streams can finish.
        "stopTimeout": args.stop_timeout_seconds,
        "logConfiguration": {
            "logDriver": "awslogs",
            "options": {
                "awslogs-group": log_group, "awslogs-region": args.region,
                "awslogs-stream-prefix": "app", "mode": "non-blocking",
                "max-buffer-size": "25m",
            },
        },
    }])


def execution_policy(log_group_arn: str, repository_arn: Optional[str], region: str = "") -> str:
    """Write the task's logs; pull its image from its own repository (when it has one) and
    GuardDuty's runtime agent (a sidecar ECS adds where Runtime Monitoring is on)."""
    statements: list[dict[str, Any]] = [{
        "Sid": "WriteOwnLogs", "Effect": "Allow",
        "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
        "Resource": f"{log_group_arn}:log-stream:*",
    }]
    pulls = {"PullOwnImages": repository_arn, "PullGuardDutyAgent": guardduty_agent_repository(region)}
    pulls = {sid: arn for sid, arn in pulls.items() if arn}
    if pulls:
        # GetAuthorizationToken has no resource-level permissions.
        statements.append({"Sid": "EcrLogin", "Effect": "Allow", "Action": "ecr:GetAuthorizationToken",
                           "Resource": "*"})
    statements += [
        {"Sid": sid, "Effect": "Allow",
         "Action": ["ecr:BatchCheckLayerAvailability", "ecr:GetDownloadUrlForLayer", "ecr:BatchGetImage"],
         "Resource": arn}
        for sid, arn in pulls.items()
    ]
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


def read_policy(secret_arns: list[pulumi.Input[str]], key_arn: pulumi.Input[str],
                region: str) -> pulumi.Output[str]:
    """What a task execution role needs to inject these secrets, and nothing more."""
    return pulumi.Output.all(key_arn, *secret_arns).apply(lambda a: json.dumps({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ReadTheseSecrets",
                "Effect": "Allow",
                "Action": "secretsmanager:GetSecretValue",
                "Resource": sorted(a[1:]),
            },
            {
                "Sid": "DecryptThemWithTheStackKey",
                "Effect": "Allow",
                "Action": "kms:Decrypt",
                "Resource": a[0],
                "Condition": {
                    "StringEquals": {"kms:ViaService": f"secretsmanager.{region}.amazonaws.com"}
                },
            },
        ],
    }))
