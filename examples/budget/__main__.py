"""The budget component alone: copy components/budget.py here, then `pulumi up`."""

import pulumi
from budget import Budget, BudgetArgs

budget = Budget("budget", BudgetArgs(name="my-app", environment="dev", monthly_limit_usd=100,
                                    emails=["finance@mycompany.com"]))
pulumi.export("budgetName", budget.budget_name)
