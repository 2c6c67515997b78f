"""The demo's show: four overlapping async-action lifecycles played on a stand-in."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from daemon.demo.wire import Json, documented_example

if TYPE_CHECKING:
    from daemon.demo.standin import VoucherifyStandIn


async def play_demo_scenario(standin: VoucherifyStandIn, *, step_s: float = 1.0) -> None:
    """Play four overlapping lifecycles over six steps: success, partial and total failures."""
    customers = standin.add_action("CUSTOMERS.IMPORT_CSV")
    bulk = standin.add_action("VOUCHERS.BULK_UPDATE")
    await asyncio.sleep(step_s)
    standin.update_action(customers, status="IN_PROGRESS", progress=30)
    standin.update_action(bulk, status="IN_PROGRESS", progress=50)
    products = standin.add_action("PRODUCTS.IMPORT_CSV")
    await asyncio.sleep(step_s)
    standin.update_action(customers, progress=70)
    standin.update_action(products, status="IN_PROGRESS", progress=20)
    standin.complete_action(bulk, example="VOUCHERS.BULK_UPDATE", result=_bulk_result(standin, bulk))
    await asyncio.sleep(step_s)
    standin.complete_action(customers, result=_partial_customers_result())
    standin.update_action(products, progress=60)
    vouchers = standin.add_action("VOUCHERS.IMPORT_CSV")
    await asyncio.sleep(step_s)
    message = "Import failed: the CSV file has no 'name' column in its header row."
    standin.complete_action(products, status="FAILED", result={"message": message})
    standin.update_action(vouchers, status="IN_PROGRESS", progress=50)
    await asyncio.sleep(step_s)
    standin.complete_action(vouchers, example="VOUCHERS.IMPORT_CSV")  # documented: all rows failed
    await asyncio.sleep(step_s)


def _bulk_result(standin: VoucherifyStandIn, action_id: str) -> Json:
    result: Json = documented_example("VOUCHERS.BULK_UPDATE")["result"]
    result["reports"] = [f"{standin.base_url}/reports/{action_id}.csv"]  # docs show a placeholder
    return result


def _partial_customers_result() -> Json:
    failed = documented_example("CUSTOMERS.IMPORT_CSV")["result"]["failed"]
    message = f"3 customer(s) imported successfully, {len(failed)} failed."
    return {"message": message, "failed": failed, "done_count": 3, "failed_count": len(failed)}
