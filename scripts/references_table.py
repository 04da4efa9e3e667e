"""How well `infer --references` finds the norm a question is about: top-1 and top-3 hits.

    .venv/bin/python scripts/references_table.py norms.txt [--count 3] [-v]

norms.txt is the task's reference document as text (`pdftotext -layout` of the PDF; not in this
repo). The questions are our own, each about a rule that document states, with the title(s) of
the rule that answers it; -v prints what each question got.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from toolkit.references import load_references  # noqa: E402
from toolkit.retrieve import query_of  # noqa: E402
from toolkit.route import Ranker  # noqa: E402

# Our own questions, each with the rule(s) of the 2025 reference document that answer it.
DEV = [
 ('"장마가 {몇 일/며칠} 동안 이어졌다." 가운데 올바른 것을 선택하고, 그 이유를 설명하세요.', ["한글 맞춤법 제27항"]),
 ('다음 문장에서 어문 규범에 부합하지 않는 부분을 찾아 고치고, 그 이유를 설명하세요.\n"발표 자료는 내가 정리할께."', ["한글 맞춤법 제53항"]),
 ("'깨끗이'와 '깨끗히' 가운데 표준 표기는 무엇인가?", ["한글 맞춤법 제51항", "한글 맞춤법 제25항"]),
 ('"나도 그 문제를 {풀 수 있다/풀수 있다}." 가운데 올바른 것을 선택하고, 그 이유를 설명하세요.', ["한글 맞춤법 제42항"]),
 ('"바구니에 {사과 한 개/사과 한개}가 남았다." 가운데 올바른 것을 선택하고, 그 이유를 설명하세요.', ["한글 맞춤법 제43항"]),
 ('"{꽃마저/꽃 마저} 시들었다." 가운데 올바른 것을 선택하고, 그 이유를 설명하세요.', ["한글 맞춤법 제41항"]),
 ('"불이 {꺼져 간다/꺼져간다}." 가운데 올바른 것을 선택하고, 그 이유를 설명하세요.', ["한글 맞춤법 제47항"]),
 ('다음 문장에서 어문 규범에 부합하지 않는 부분을 찾아 고치고, 그 이유를 설명하세요.\n"채영신씨가 먼저 도착했다."', ["한글 맞춤법 제48항"]),
 ('"그 회의는 {국장 겸 과장/국장겸 과장}이 맡았다." 가운데 올바른 것을 선택하고, 그 이유를 설명하세요.', ["한글 맞춤법 제45항"]),
 ('"{내일/래일} 다시 만나자." 가운데 올바른 것을 선택하고, 그 이유를 설명하세요.', ["한글 맞춤법 제12항"]),
 ('"{양심/량심}에 따라 행동했다." 가운데 올바른 것을 선택하고, 그 이유를 설명하세요.', ["한글 맞춤법 제11항"]),
 ('"{여자/녀자} 배구 대표팀이 이겼다." 가운데 올바른 것을 선택하고, 그 이유를 설명하세요.', ["한글 맞춤법 제10항"]),
 ('"동생의 {윗눈썹/웃눈썹}이 길다." 가운데 올바른 것을 선택하고, 그 이유를 설명하세요.', ["표준어 사정 원칙 제12항"]),
 ('"토끼가 {깡충깡충/깡총깡총} 뛰었다." 가운데 올바른 것을 선택하고, 그 이유를 설명하세요.', ["표준어 사정 원칙 제8항"]),
 ('"{냄비/남비}에 물을 끓였다." 가운데 올바른 것을 선택하고, 그 이유를 설명하세요.', ["표준어 사정 원칙 제9항"]),
 ('"밭에 {강낭콩/강남콩}을 심었다." 가운데 올바른 것을 선택하고, 그 이유를 설명하세요.', ["표준어 사정 원칙 제5항"]),
 ('다음 문장에서 어문 규범에 부합하지 않는 부분을 찾아 고치고, 그 이유를 설명하세요.\n"숫개가 짖었다."', ["표준어 사정 원칙 제7항"]),
 ('"{무/무우}를 썰어 국을 끓였다." 가운데 올바른 것을 선택하고, 그 이유를 설명하세요.', ["표준어 사정 원칙 제14항"]),
 ('"할머니께 안부를 {여쭙다/여쭈다}." 가운데 무엇이 표준어인지 설명하세요.', ["표준어 사정 원칙 제26항"]),
 ('"아이가 {귀고리/귀엣고리}를 했다." 가운데 올바른 것을 선택하고, 그 이유를 설명하세요.', ["표준어 사정 원칙 제17항"]),
 ('다음 문장에서 어문 규범에 부합하지 않는 부분을 찾아 고치고, 그 이유를 설명하세요.\n"설겆이를 마쳤다."', ["표준어 사정 원칙 제20항"]),
 ('"그는 {미장이/미쟁이}로 일한다." 가운데 올바른 것을 선택하고, 그 이유를 설명하세요.', ["표준어 사정 원칙 제9항"]),
 ('"기간은 {9월 15일~9월 25일/9월 15일 ~ 9월 25일}이다." 가운데 올바른 것을 선택하고, 그 이유를 설명하세요.', ["물결표"]),
 ('"{민수·영희/민수 · 영희}가 짝이 되었다." 가운데 올바른 것을 선택하고, 그 이유를 설명하세요.', ["가운뎃점"]),
 ('"{cat/캣}의 표기는 {캣/캐트}이다." 가운데 올바른 것을 선택하고, 그 이유를 설명하세요.', ["외래어 표기법 제3장 제1절 제1항"]),
 ('"일본 지명 {삿포로/삽포로}를 여행했다." 가운데 올바른 것을 선택하고, 그 이유를 설명하세요.', ["외래어 표기법 제3장 제6절 제1항"]),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("references", type=Path)
    ap.add_argument("--count", type=int, default=3)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    refs = load_references(args.references)
    ranker = Ranker(refs)
    first = within = 0
    for question, expected in DEV:
        titles = [refs[n].title for n, _ in ranker.rank(question, args.count)]
        hits = [any(e in t for e in expected) for t in titles]
        first += bool(hits and hits[0])
        within += any(hits)
        if args.verbose:
            print("hit " if any(hits) else "MISS", query_of(question)[:30], "->", [t.split(" - ")[-1] for t in titles])
    print(f"{len(refs)} passages, {len(DEV)} questions: first {first}, within {args.count} {within}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
