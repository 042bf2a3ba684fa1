"""The price table's refresh from the AWS Price List API. The Price List cannot be run here
(moto does not emulate it), so botocore's Stubber answers with products in the API's own
format (aws_v1), and checks the requests the command sends."""

from __future__ import annotations

import json

import boto3
import pytest
from botocore.stub import ANY, Stubber

from offline import prices_refresh


def product(usage: str, usd: str, unit: str = "Hrs") -> str:
    return json.dumps({
        "product": {"attributes": {"usagetype": usage, "regionCode": "us-east-1"}},
        "terms": {"OnDemand": {"T1": {"priceDimensions": {
            "D2": {"beginRange": "10240", "unit": unit, "pricePerUnit": {"USD": "0.0100000000"}},
            "D1": {"beginRange": "0", "unit": unit, "pricePerUnit": {"USD": usd}},
        }}}},
    })


@pytest.fixture
def client():
    return boto3.client("pricing", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")


def test_each_item_takes_the_first_tier_of_the_product_its_pattern_names(client, tmp_path, monkeypatch):
    monkeypatch.setattr(prices_refresh, "PRICES", tmp_path)
    specs = {"nat.hour": prices_refresh.SPECS["nat.hour"],
             "waf.acl_month": prices_refresh.SPECS["waf.acl_month"],
             "fargate_spot.vcpu_hour.ARM64": prices_refresh.SPECS["fargate_spot.vcpu_hour.ARM64"]}
    monkeypatch.setattr(prices_refresh, "SPECS", specs)
    (tmp_path / "us-east-1.json").write_text(json.dumps({"region": "us-east-1", "items": {
        "fargate_spot.vcpu_hour.ARM64": {"usd": 0.00996, "unit": "vCPU-hour", "page": "p", "product": "x"}}}))
    with Stubber(client) as stub:
        stub.add_response("get_products", {"PriceList": [
            product("USE1-NatGateway-Bytes", "0.045", "GB"), product("USE1-NatGateway-Hours", "0.0450000000")],
            "FormatVersion": "aws_v1"},
            {"ServiceCode": "AmazonEC2", "FormatVersion": "aws_v1",
             "Filters": [{"Type": "TERM_MATCH", "Field": "regionCode", "Value": "us-east-1"}]})
        stub.add_response("get_products", {"PriceList": [product("USE1-WebACL", "0.0068493151")],
                                           "FormatVersion": "aws_v1"},
                          {"ServiceCode": "awswaf", "FormatVersion": "aws_v1", "Filters": ANY})
        stub.add_response("get_products", {"PriceList": [], "FormatVersion": "aws_v1"},
                          {"ServiceCode": "AmazonECS", "FormatVersion": "aws_v1", "Filters": ANY})
        table, kept = prices_refresh.refresh(client, "us-east-1", [], "2026-11-30")
    assert table["items"]["nat.hour"]["usd"] == 0.045
    assert table["items"]["nat.hour"]["product"] == "AmazonEC2 USE1-NatGateway-Hours"
    assert table["items"]["waf.acl_month"]["usd"] == round(0.0068493151 * 730, 6), "hourly, kept per month"
    assert kept == ["fargate_spot.vcpu_hour.ARM64"], "not listed: the old figure stays, and it is said"
    assert table["items"]["fargate_spot.vcpu_hour.ARM64"]["usd"] == 0.00996
    assert table["recorded"] == "2026-11-30" and "Price List API" in table["basis"]


def test_node_types_are_asked_per_engine():
    specs = prices_refresh.node_specs(["cache.m7g.large"])
    assert specs["elasticache.valkey.cache.m7g.large"][2] == {"instanceType": "cache.m7g.large",
                                                              "cacheEngine": "Valkey"}
    assert "elasticache.redis.cache.m7g.large" in specs


def test_a_product_without_an_on_demand_price_is_skipped():
    assert prices_refresh.first_tier({"terms": {"Reserved": {}}}) is None
