"""`clusterchat bench`: load scenarios for sizing a deployment."""
