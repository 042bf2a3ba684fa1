"""A monthly AWS cost budget for one environment, with notifications at thresholds.

Creates: an AWS Budgets cost budget filtered on the resources tagged `Environment=<env>` (the
provider's default tags put that tag on everything the stack creates), with one notification per
actual and forecast threshold to the given e-mails and SNS topic.

Prerequisite, once per account: activate `Environment` as a cost allocation tag (Billing console,
or `aws ce update-cost-allocation-tags-status`); until then the filter matches nothing.

Cost: the first two budgets per account are free, then $0.02 per budget-day.

Args (`BudgetArgs`, each described where it is declared below):
    name: str, required
    environment: str, required
    monthly_limit_usd: float, required
    actual_thresholds: list[int] = [50, 80, 100]
    forecast_thresholds: list[int] = [100]
    emails: list[str] = []
    topic_arn: Optional[pulumi.Input[str]] = None
    tag_key: str = 'Environment'

Outputs: budget_name.

Example (examples/budget/, runs as written beside a copy of this file):

    import pulumi
    from budget import Budget, BudgetArgs

    budget = Budget("budget", BudgetArgs(name="my-app", environment="dev", monthly_limit_usd=100,
                                        emails=["finance@mycompany.com"]))
    pulumi.export("budgetName", budget.budget_name)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import pulumi
import pulumi_aws as aws


def problems(a: BudgetArgs) -> list[tuple[str, str]]:
    """What AWS Budgets would refuse in these arguments, as (argument, why)."""
    found = []
    if a.monthly_limit_usd <= 0:
        found.append(("monthly_limit_usd", "must be a positive amount in USD"))
    for arg in ("actual_thresholds", "forecast_thresholds"):
        if any(not 1 <= p <= 1000 for p in getattr(a, arg)):
            found.append((arg, "each threshold is a percentage of the limit, 1 to 1000"))
    return found


@dataclass
class BudgetArgs:
    name: str
    """The budget's name, e.g. llm-service-staging."""
    environment: str
    """The value of the cost-allocation tag the budget counts (tag_key), e.g. staging."""
    monthly_limit_usd: float
    """The monthly budget in USD, of the costs tagged with the environment (under tag_key)."""
    actual_thresholds: list[int] = field(default_factory=lambda: [50, 80, 100])
    """Alerts at these percentages of actual spend."""
    forecast_thresholds: list[int] = field(default_factory=lambda: [100])
    """Alerts at these percentages of forecast spend."""
    emails: list[str] = field(default_factory=list)
    """Addresses told when actual or forecast spend crosses a threshold."""
    topic_arn: Optional[pulumi.Input[str]] = None
    """An SNS topic told as well (the alarms' topic), or None."""
    tag_key: str = "Environment"
    """The cost-allocation tag whose value (environment) selects the spend counted; activate it in Billing."""

    def __post_init__(self) -> None:
        for arg, why in problems(self):
            raise ValueError(f"BudgetArgs.{arg}: got {getattr(self, arg.split('[')[0])!r}; {why}")


class Budget(pulumi.ComponentResource):
    budget_name: pulumi.Output[str]
    """The budget's name, as AWS Budgets shows it."""

    def __init__(self, name: str, args: BudgetArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-service:budget:Budget", name, None, opts)
        notifications = [
            aws.budgets.BudgetNotificationArgs(
                notification_type=kind, comparison_operator="GREATER_THAN", threshold=percent,
                threshold_type="PERCENTAGE", subscriber_email_addresses=args.emails or None,
                subscriber_sns_topic_arns=[args.topic_arn] if args.topic_arn else None,
            )
            for kind, thresholds in (("ACTUAL", args.actual_thresholds),
                                     ("FORECASTED", args.forecast_thresholds))
            for percent in thresholds
        ]
        budget = aws.budgets.Budget(
            f"{name}-monthly", name=args.name, budget_type="COST", time_unit="MONTHLY",
            limit_amount=f"{args.monthly_limit_usd:.2f}", limit_unit="USD",
            cost_filters=[aws.budgets.BudgetCostFilterArgs(
                name="TagKeyValue", values=[f"user:{args.tag_key}${args.environment}"],
            )],
            notifications=notifications, opts=pulumi.ResourceOptions(parent=self),
        )
        self.budget_name = budget.name
        self.register_outputs({"budget_name": self.budget_name})
