"""Agencies and their users."""
from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..errors import Conflict, InvalidInput, NotFound
from ..models import Agency, Role, User


def create_agency(session: Session, name: str, *, credit_balance: int = 0) -> Agency:
    name = name.strip()
    if not name or len(name) > 200:
        raise InvalidInput("name must be 1 to 200 characters", field="name")
    agency = Agency(name=name, credit_balance=credit_balance)
    session.add(agency)
    session.flush()
    return agency


def get_agency(session: Session, agency_id: uuid.UUID) -> Agency:
    agency = session.get(Agency, agency_id)
    if agency is None:
        raise NotFound("agency not found", field="agency_id")
    return agency


def list_agencies(session: Session) -> list[Agency]:
    return list(session.scalars(select(Agency).order_by(Agency.created_at)))


def add_user(session: Session, *, auth_subject: str, agency_id: uuid.UUID | None, role: Role = Role.member,
             email: str | None = None) -> User:
    if agency_id is not None:
        get_agency(session, agency_id)
    if session.scalar(select(User).where(User.auth_subject == auth_subject)) is not None:
        raise Conflict(f"a user with subject {auth_subject!r} exists already", field="auth_subject")
    user = User(auth_subject=auth_subject, agency_id=agency_id, role=role, email=email)
    session.add(user)
    session.flush()
    return user


def list_users(session: Session, agency_id: uuid.UUID) -> list[User]:
    return list(session.scalars(select(User).where(User.agency_id == agency_id).order_by(User.created_at, User.id)))


def remove_user(session: Session, agency_id: uuid.UUID, user_id: uuid.UUID) -> None:
    user = session.scalar(select(User).where(User.id == user_id, User.agency_id == agency_id))
    if user is None:
        raise NotFound("user not found", field="user_id")
    session.delete(user)
    session.flush()
