"""Friends and groups a person manages, from the web client's menus, in two
real browser pages: roles, removal, invitations, blocking, each change shown
to the other page as it happens."""

from __future__ import annotations

from playwright.async_api import Page, expect

from clusterchat.server.node import Node
from tests.browser.conftest import NewPage, add_friend, register, say


async def create_group(page: Page, name: str) -> int:
    await page.click("#group-btn")
    await page.fill("#group-name", name)
    await page.click("#create-group button")
    await expect(page.locator("#conv-title")).to_have_text(name)
    key = await page.locator('#groups [data-key^="g:"]').first.get_attribute("data-key")
    return int((key or "g:0")[2:])


async def join(page: Page, gid: int) -> None:
    await page.click("#group-btn")
    await page.fill("#join-id", str(gid))
    await page.press("#join-id", "Enter")


async def test_roles_removal_invitations_and_blocking(web_node: Node, new_page: NewPage) -> None:
    port = web_node.http.port
    ann, bob = await new_page(port), await new_page(port)
    await register(ann, "Ann Lee")
    bob_id = await register(bob, "Bob Marsh")
    gid = await create_group(ann, "Book club")
    await join(bob, gid)
    await expect(bob.locator("#conv-title")).to_have_text("Book club")

    # Ann appoints Bob; Bob is told, and sees the admin forms in his menu.
    await ann.click("#members-btn")
    await ann.click(f'[data-testid="admin-{bob_id}"]')
    await expect(bob.locator("#toast")).to_have_text("you are now an admin of Book club")
    await bob.click("#actions-btn")
    await expect(bob.locator("#group-admin")).to_be_visible()
    await expect(bob.locator("#act-delete")).to_be_hidden()
    await bob.fill("#rename-name", "Novel club")
    await bob.press("#rename-name", "Enter")
    await expect(ann.locator("#conv-title")).to_have_text("Novel club")

    # Ann removes Bob: he is told, and the group leaves his page.
    await ann.click(f'[data-testid="kick-{bob_id}"]')
    await expect(bob.locator("#toast")).to_contain_text("you were removed from")
    await expect(bob.locator(f'[data-key="g:{gid}"]')).to_have_count(0)
    await expect(bob.locator("#conversation")).to_be_hidden()

    # Invite-only: Bob cannot join back until Ann invites him.
    await ann.click("#actions-btn")
    await ann.check("#act-inviteonly")
    await expect(ann.locator("#toast")).to_have_text("Joining now needs an invitation")
    await join(bob, gid)
    await expect(bob.locator("#toast")).to_contain_text("invitation only")
    await ann.fill("#invite-id", str(bob_id))
    await ann.press("#invite-id", "Enter")
    await expect(bob.locator("#invites")).to_contain_text("Novel club")
    await expect(bob.locator("#toast")).to_contain_text("Join or Decline it under Invitations")
    # Bob declines it; the invitation goes, and Ann may invite him again.
    await bob.click(f'[data-testid="decline-{gid}"]')
    await expect(bob.locator("#toast")).to_have_text("Invitation to Novel club declined")
    await expect(bob.locator("#invites-section")).to_be_hidden()
    await ann.fill("#invite-id", str(bob_id))
    await ann.press("#invite-id", "Enter")
    await expect(bob.locator("#invites")).to_contain_text("Novel club")
    await bob.click(f'[data-testid="accept-{gid}"]')
    await expect(bob.locator("#conv-title")).to_have_text("Novel club")
    await expect(bob.locator("#invites-section")).to_be_hidden()

    # Blocking: Bob's message to Ann is refused; unblocking from the sidebar.
    await add_friend(ann, bob_id)
    await ann.click("#actions-btn")
    await ann.click("#act-block")
    await expect(ann.locator("#blocked")).to_contain_text("Bob Marsh")
    ann_entry = bob.locator('#friends [data-key^="u:"]').first
    await ann_entry.click()
    await say(bob, "hello?")
    await expect(bob.locator("#messages .msg.mine .status").last).to_contain_text("not sent")
    await ann.click(f'[data-testid="unblock-{bob_id}"]')
    await expect(ann.locator("#blocked-section")).to_be_hidden()
    await say(bob, "hello again")
    await expect(bob.locator("#messages .msg.mine .status").last).to_have_text("delivered")

    # Ann deletes the group; Bob is told.
    await ann.click(f'[data-key="g:{gid}"]')
    await ann.click("#actions-btn")
    await ann.click("#act-delete")
    await expect(bob.locator("#toast")).to_contain_text("was deleted by Ann Lee")
    await expect(ann.locator(f'[data-key="g:{gid}"]')).to_have_count(0)


async def test_the_menus_leave_names_and_inputs_readable(web_node: Node, new_page: NewPage) -> None:
    """A short name beside three role buttons was squeezed to one letter a
    line, and the manage menu's inputs to "New na" (newcomer walkthrough)."""
    port = web_node.http.port
    ann, bob = await new_page(port, width=1100, height=700), await new_page(port)
    await register(ann, "ann")
    bob_id = await register(bob, "bob")
    gid = await create_group(ann, "devs")
    await join(bob, gid)
    await ann.click("#members-btn")
    name = ann.locator("#member-list .member", has_text="bob").locator(".name")
    await expect(name).to_have_text("bob")
    await expect(ann.locator(f'[data-testid="admin-{bob_id}"]')).to_be_visible()
    box = await name.bounding_box()
    line = await name.evaluate("n => parseFloat(getComputedStyle(n).lineHeight) || 20")
    assert box is not None and box["height"] < 1.5 * line, box  # one line
    await ann.click("#actions-btn")
    for field in ("#rename-name", "#describe-text", "#invite-id"):
        box = await ann.locator(field).bounding_box()
        assert box is not None and box["width"] >= 120, (field, box)
