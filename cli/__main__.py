from dqcodec.cli import main

main()
